"""Exact moments of weight tensors and the Q/K/V split of GPT-2's fused attention weight.

All statistics are *population* moments over every entry of the tensor (divide by N, not
N - 1), accumulated in float64 whatever the tensor's dtype, so bf16/fp16 training does not
change what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QKV = ("q", "k", "v")


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


def split_qkv(c_attn_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K and V blocks of GPT-2's ``c_attn.weight``.

    GPT-2 stores ``c_attn`` as a ``Conv1D`` with weight shape (in=d, out=3d); the output
    columns are laid out [Q | K | V] (``GPT2Attention`` does ``.split(d, dim=2)`` on the
    output), so the split is along dim 1. Returns views, no copy.
    """
    if c_attn_weight.dim() != 2 or c_attn_weight.shape[1] % 3:
        raise ValueError(f"expected a (d, 3d) c_attn weight, got shape {tuple(c_attn_weight.shape)}")
    d = c_attn_weight.shape[1] // 3
    return c_attn_weight[:, :d], c_attn_weight[:, d : 2 * d], c_attn_weight[:, 2 * d :]


@torch.no_grad()
def column_block_moments(weight: torch.Tensor, n_blocks: int = 1) -> torch.Tensor:
    """Population moments of ``n_blocks`` equal column blocks of a 2-D tensor, in one pass.

    ``weight`` has shape (rows, n_blocks * c); block ``i`` is ``weight[:, i*c:(i+1)*c]`` (for
    GPT-2's ``c_attn`` with ``n_blocks=3``: Q, K, V, as in :func:`split_qkv`). Returns a float64
    tensor of shape (n_blocks, 3) holding, per block, the mean, the population variance (divide
    by the block's ``rows * c`` entries, two-pass) and the RMS. Same numbers as :func:`moments`
    on each block, with a handful of kernels instead of three per block (the training callback
    calls this for every layer, so it stays cheap).
    """
    if weight.dim() != 2 or weight.shape[1] % n_blocks:
        raise ValueError(f"cannot split a tensor of shape {tuple(weight.shape)} into {n_blocks} column blocks")
    x = weight.detach().to(torch.float64).reshape(weight.shape[0], n_blocks, -1)
    mean = x.mean(dim=(0, 2))
    var = ((x - mean[None, :, None]) ** 2).mean(dim=(0, 2))
    rms = (x * x).mean(dim=(0, 2)).sqrt()
    return torch.stack([mean, var, rms], dim=1)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind ``t``: a sharded ``DTensor`` (FSDP2) is gathered (a collective:
    every rank must call it), a plain tensor is returned as is."""
    gather = getattr(t, "full_tensor", None)
    return gather() if callable(gather) else t
