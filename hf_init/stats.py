"""Exact moments of one weight tensor (the two-pass reference, used by the init report) and
of each row of a stacked tensor (:func:`row_variances`: the MLP ensemble's members).

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


@torch.no_grad()
def row_variances(t: torch.Tensor) -> torch.Tensor:
    """Population variance (divide by N) of each ``t[i]`` over all its entries, float64, two-pass
    (exact even when |mean| >> std): shape (t.shape[0],), on ``t``'s device.

    The rows go through the reused float64 buffer of :func:`hf_init.distributed_stats.workspace`
    (as many rows per pass as :data:`~hf_init.distributed_stats.WORKSPACE_ELEMENTS` holds),
    centred and squared in place: a fresh float64 copy and torch's one-pass (Welford) ``var``
    cost 8x more at the MLP studies' sizes (80 x 256 x 256: 23 ms against 2.6 ms here)."""
    from .distributed_stats import WORKSPACE_ELEMENTS, workspace

    rows = t.detach().reshape(t.shape[0], -1)
    n = rows.shape[1]
    out = torch.empty(rows.shape[0], dtype=torch.float64, device=t.device)
    step = max(1, WORKSPACE_ELEMENTS // max(n, 1))
    for i in range(0, rows.shape[0], step):
        x = workspace(t.device, min(step, rows.shape[0] - i) * n).view(-1, n)
        x.copy_(rows[i:i + x.shape[0]])
        x.sub_(x.mean(dim=1, keepdim=True))
        out[i:i + x.shape[0]] = x.mul_(x).sum(dim=1) / n
    return out
