"""Exact moments of one weight tensor (the two-pass reference, used by the init report).

The recorded statistics of the training callback (column blocks of many layers, sharded or
not) come from the one engine in :mod:`hf_init.distributed_stats`. All statistics are
*population* moments over every entry of the tensor (divide by N, not N - 1), accumulated in float64 whatever the tensor's dtype, so bf16/fp16 training does not
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
