"""Exact moments of weight tensors (and of column blocks of them: the parts of a fused weight).

All statistics are *population* moments over every entry of the tensor (divide by N, not
N - 1), accumulated in float64 whatever the tensor's dtype, so bf16/fp16 training does not
change what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Moments:
    """Population moments of all entries of a tensor: mean, variance (divide by N), RMS."""

    mean: float
    var: float
    rms: float
    numel: int


@torch.no_grad()
def moments(t: torch.Tensor) -> Moments:
    """Mean, population variance and RMS of all entries of ``t``, computed in float64."""
    x = t.detach().to(torch.float64).reshape(-1)
    n = x.numel()
    mean = x.mean()
    var = ((x - mean) ** 2).mean()  # two-pass: exact even when |mean| >> std
    rms = torch.sqrt((x * x).mean())
    return Moments(float(mean), float(var), float(rms), n)


@torch.no_grad()
def column_block_moments(weights, n_blocks: int = 1) -> torch.Tensor:
    """Population moments of ``n_blocks`` equal column blocks of same-shape 2-D tensors.

    ``weights`` is one tensor of shape (rows, n_blocks * c) or a sequence of L such tensors
    (e.g. one GPT-2 weight kind in every layer); block ``i`` is ``w[:, i*c:(i+1)*c]`` (for
    GPT-2's ``c_attn`` with ``n_blocks=3``: q, k, v, as ``gpt2_layout.Weight.split`` cuts them). Returns float64
    of shape (n_blocks, 3) for one tensor, (L, n_blocks, 3) for a sequence, holding per block
    the mean, the population variance (divide by the block's ``rows * c`` entries) and the RMS.

    Built for the training callback, which calls it at every recorded step: the entries are
    copied once into a float64 buffer (block entries contiguous) and the variance is
    E[x^2] - E[x]^2 from float64 sums, one read pass each. Its relative rounding error is about
    1e-16 * (1 + mean^2 / var): negligible for weight and gradient blocks, whose |mean| is far
    below their std. :func:`moments` is the two-pass reference (the tests compare against numpy).
    """
    single = isinstance(weights, torch.Tensor)
    ws = [weights] if single else list(weights)
    rows, cols = ws[0].shape if ws and ws[0].dim() == 2 else (0, 0)
    if not ws or any(w.dim() != 2 or tuple(w.shape) != (rows, cols) for w in ws) or cols % n_blocks:
        raise ValueError(f"expected same-shape 2-D tensors with columns divisible by {n_blocks}, "
                         f"got shapes {[tuple(w.shape) for w in ws]}")
    c = cols // n_blocks
    n = rows * c
    buf = torch.empty((len(ws), n_blocks, rows, c), dtype=torch.float64, device=ws[0].device)
    for i, w in enumerate(ws):
        buf[i].copy_(w.detach().reshape(rows, n_blocks, c).transpose(0, 1))
    x = buf.view(len(ws) * n_blocks, n)
    mean = x.sum(dim=1) / n
    mean_sq = torch.linalg.vector_norm(x, dim=1).square_() / n
    var = (mean_sq - mean * mean).clamp_(min=0.0)
    out = torch.stack([mean, var, mean_sq.sqrt()], dim=1).reshape(len(ws), n_blocks, 3)
    return out[0] if single else out


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind ``t``: a sharded ``DTensor`` (FSDP2) is gathered (a collective:
    every rank must call it), a plain tensor is returned as is."""
    gather = getattr(t, "full_tensor", None)
    return gather() if callable(gather) else t
