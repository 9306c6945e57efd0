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
