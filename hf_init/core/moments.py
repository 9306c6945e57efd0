"""Exact float64 moments of tensors: of a whole tensor (:func:`moments`), per row
(:func:`row_variances`), and per column block of 2-D weights, sharded (FSDP2 / DTensor) or not,
without gathering (:func:`sharded_block_moments`, the recorders' engine).

Each rank reduces the part of every weight it holds to (count, sum, sum of squares) per column
block (Q | K | V of GPT-2's fused ``c_attn``, one block for the other weights); one
``all_reduce(SUM)`` of one stacked tensor then gives the totals, from which mean, population
variance and RMS follow. Row shards (FSDP2's ``Shard(0)``, even, uneven or empty) hold every
block; a column shard (``Shard(1)``) may start or end inside a block and is cut at the global
block boundaries; a replica (``Replicate``) counts once.

The variance is ``sumsq/n - (sum/n)^2`` with torch's pairwise float64 sums: its rounding error
grows with mean^2/var, and weights and gradients have |mean| far below their std, so nothing
cancels (``test_sum_of_squares_does_not_cancel_at_gpt2_scale`` holds such cases to 1e-13).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

try:  # torch >= 2.4
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # pragma: no cover - torch without DTensor: plain tensors only
    DTensor = Replicate = Shard = None
    compute_local_shape_and_global_offset = None

try:
    from torch.distributed.tensor.placement_types import _StridedShard
except ImportError:  # pragma: no cover
    _StridedShard = None


@dataclass(frozen=True)
class LocalPart:
    """The part of a 2-D global tensor that this rank holds.

    ``local`` is the rows ``offset[0] : offset[0] + local.shape[0]`` and the columns
    ``offset[1] : offset[1] + local.shape[1]`` of a tensor of shape ``global_shape``.
    ``counted`` is False on a rank whose part another rank already contributes (a replica on
    a ``Replicate`` mesh dimension): it adds zeros to the reduction.
    """

    local: torch.Tensor
    global_shape: tuple[int, int]
    offset: tuple[int, int]
    counted: bool = True


def local_part(t: torch.Tensor) -> LocalPart:
    """The :class:`LocalPart` of ``t`` on this rank: for a ``DTensor`` its local shard, where it
    sits in the global tensor (from its mesh and placements: ``Shard(d)`` on any mesh dims,
    even or uneven, and ``Replicate``, counted on mesh coordinate 0 only); a plain tensor is
    the whole tensor, held here. ``Partial`` (unreduced) and strided shards are refused."""
    if t.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(t.shape)}")
    if DTensor is None or not isinstance(t, DTensor):
        return LocalPart(t, tuple(t.shape), (0, 0))
    mesh, placements = t.device_mesh, t.placements
    coord = mesh.get_coordinate()
    local = t.to_local()
    if coord is None:  # this rank is outside the mesh: it holds nothing
        return LocalPart(local.new_zeros((0, 0)), tuple(t.shape), (0, 0), counted=False)
    counted = True
    for mesh_dim, p in enumerate(placements):
        if _StridedShard is not None and isinstance(p, _StridedShard):
            raise ValueError(
                f"strided shard placement {p} is not supported (the local rows are not one range)"
            )
        if isinstance(p, Replicate):
            counted = counted and coord[mesh_dim] == 0
        elif not isinstance(p, Shard):
            raise ValueError(
                f"placement {p} is not supported: reduce Partial tensors first "
                "(only Shard and Replicate)"
            )
    shape, offset = compute_local_shape_and_global_offset(t.shape, mesh, placements)
    if tuple(local.shape) != tuple(shape):
        raise ValueError(
            f"local shard has shape {tuple(local.shape)}, its placements say {tuple(shape)}"
        )
    return LocalPart(local, tuple(t.shape), tuple(int(o) for o in offset), counted)


# float64 entries (32 MiB) converted per pass, unless one part alone is larger
WORKSPACE_ELEMENTS = 1 << 22
_WORKSPACES: dict[torch.device, torch.Tensor] = {}


def workspace(device: torch.device, n: int) -> torch.Tensor:
    """A float64 buffer of ``n`` entries on ``device``, reused from call to call (grown when a
    larger one is asked for): on the CPU a fresh buffer of megabytes is new memory from the
    operating system each time, whose page faults cost more than the sums themselves. Held: at
    most :data:`WORKSPACE_ELEMENTS` entries, or one weight part where a single part is larger
    (column shards, which straddle block boundaries, take all layers' piece of one block at
    once)."""
    device = torch.device(device)
    buf = _WORKSPACES.get(device)
    if buf is None or buf.numel() < n:
        _WORKSPACES.pop(device, None)
        buf = _WORKSPACES[device] = torch.empty(n, dtype=torch.float64, device=device)
    return buf[:n]


def _copy_all(dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor]) -> None:
    """``d.copy_(s)`` for every pair (float32 or bf16 into the float64 workspace), in one call where
    torch has the multi-tensor copy (no Python round trip per tensor)."""
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(list(dst), list(src))
    else:  # pragma: no cover - torch without _foreach_copy_
        for d, s in zip(dst, src):
            d.copy_(s)


@torch.no_grad()
def block_sums(part: LocalPart, n_blocks: int = 1) -> torch.Tensor:
    """float64 (count, sum, sum of squares) of this part's entries in each of ``n_blocks`` equal
    global column blocks: shape (n_blocks, 3), on the part's device. Block ``b`` is the global
    columns ``b*c : (b+1)*c`` with ``c = global_cols / n_blocks``; local columns that straddle a
    block boundary are split there. A part that is not ``counted`` gives zeros."""
    return stacked_block_sums([part], n_blocks)[0]


@torch.no_grad()
def stacked_block_sums(parts: Sequence[LocalPart], n_blocks: int = 1) -> torch.Tensor:
    """:func:`block_sums` of many parts of the same global shape (one weight kind in every
    layer) at once: float64 of shape (len(parts), n_blocks, 3), on the parts' device, with no
    host synchronisation (the caller reads all records at once).

    The engine of every recorded statistic. Parts that share a local shape, offset and
    ``counted`` (every layer of an unsharded or FSDP2 row-sharded model) are copied whole, in one
    multi-tensor copy, into the reused float64 :func:`workspace`, then reduced per part and
    column block (a strided view: Q, K, V are not copied apart) with torch's pairwise float64
    sums. Float64 because float32 accumulation misses the 1e-12 relative agreement with a float64
    reference by orders of magnitude (``benchmarks/callback_overhead.py --precision``).
    """
    if not parts:
        raise ValueError("no parts given")
    rows, cols = parts[0].global_shape
    if any(p.global_shape != (rows, cols) for p in parts):
        raise ValueError(
            f"parts of different global shapes: {sorted({p.global_shape for p in parts})}"
        )
    if cols % n_blocks:
        raise ValueError(f"{cols} columns do not split into {n_blocks} equal blocks")
    out = torch.zeros((len(parts), n_blocks, 3), dtype=torch.float64, device=parts[0].local.device)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(parts):
        if p.counted and p.local.numel():
            groups.setdefault((tuple(p.local.shape), p.offset), []).append(i)
    for ((_, lc), (_, lo)), index in groups.items():
        group = [parts[i] for i in index]
        if lo == 0 and lc == cols:  # whole rows (unsharded or row shards): equal blocks
            _whole_row_sums(group, index, n_blocks, out)
        else:
            _column_range_sums(group, index, n_blocks, out)
    return out


def _whole_row_sums(group: list[LocalPart], index: list[int], n_blocks: int, out) -> None:
    """(count, sum, sumsq) per block of parts holding whole rows, into ``out[index]``: as many
    parts per pass through the workspace as it holds."""
    lr, cols = group[0].local.shape
    c = cols // n_blocks
    per_part = lr * cols
    step = max(1, WORKSPACE_ELEMENTS // per_part)  # parts per pass: the buffer stays bounded
    for start in range(0, len(group), step):
        chunk = index[start : start + step]
        x = workspace(out.device, len(chunk) * per_part).view(len(chunk), lr, cols)
        _copy_all(x.unbind(0), [p.local.detach() for p in group[start : start + step]])
        blocks = x.view(len(chunk), lr, n_blocks, c)  # block b: columns b*c .. (b+1)*c
        total = blocks.sum(dim=(1, 3))
        squares = x.mul_(x).view_as(blocks).sum(dim=(1, 3))  # in place: no second buffer
        out[chunk] = torch.stack([torch.full_like(total, float(lr * c)), total, squares], dim=2)


def _column_range_sums(group: list[LocalPart], index: list[int], n_blocks: int, out) -> None:
    """(count, sum, sumsq) per block of parts holding a column range that may start or end
    inside a block, into ``out[index]``: the columns are cut at the global block boundaries."""
    lr, lc = group[0].local.shape
    lo, hi = group[0].offset[1], group[0].offset[1] + lc
    c = group[0].global_shape[1] // n_blocks
    for b in range(n_blocks):
        a, e = max(lo, b * c), min(hi, (b + 1) * c)
        if a >= e:
            continue
        x = workspace(out.device, len(group) * lr * (e - a)).view(len(group), lr * (e - a))
        for j, part in enumerate(group):
            x[j].view(lr, e - a).copy_(part.local.detach()[:, a - lo : e - lo])
        out[index, b, 0] = float(lr * (e - a))
        out[index, b, 1] = x.sum(dim=1)
        out[index, b, 2] = x.mul_(x).sum(dim=1)


def moments_from_sums(sums: torch.Tensor) -> torch.Tensor:
    """(count, sum, sumsq) in the last dim -> (mean, population variance, RMS); a count of 0
    gives NaN (a missing gradient)."""
    n, s, q = sums.unbind(-1)
    mean = s / n
    mean_sq = q / n
    var = (mean_sq - mean * mean).clamp(min=0.0)
    return torch.stack([mean, var, mean_sq.sqrt()], dim=-1)


@torch.no_grad()
def sharded_block_sums(
    kinds: Sequence[tuple[Sequence[torch.Tensor | None], int]],
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Global float64 (count, sum, sumsq) per (layer, block) of sharded or plain 2-D weights.

    ``kinds`` is a sequence of ``(tensors, n_blocks)``: one tensor per layer (same layer count
    for every kind; ``None`` for a missing gradient gives count 0), split into ``n_blocks``
    column blocks (GPT-2: ``c_attn`` with 3 = Q|K|V, ``attn.c_proj``, ``mlp.c_fc``,
    ``mlp.c_proj`` with 1). Tensors may be ``DTensor`` (FSDP2 parameters and their ``.grad``)
    or plain. Returns shape (n_layer, sum of n_blocks, 3), blocks in the order given.

    If any tensor is a ``DTensor`` and a process group of more than one rank is up, every
    rank must call this (like any collective): each reduces its own shards and ONE
    ``all_reduce(SUM)`` of the stacked tensor makes the totals; plain tensors then count on
    rank 0 only. Otherwise there is no collective and plain tensors are whole tensors.
    """
    if not kinds:
        raise ValueError("no weights given")
    n_layer = len(kinds[0][0])
    if any(len(ts) != n_layer for ts, _ in kinds):
        raise ValueError(
            f"every kind needs one tensor per layer, got {[len(ts) for ts, _ in kinds]}"
        )
    tensors = [t for ts, _ in kinds for t in ts if t is not None]
    sharded = DTensor is not None and any(isinstance(t, DTensor) for t in tensors)
    reduce = (
        sharded and dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
    )
    plain_counts = not reduce or dist.get_rank(group) == 0
    device = tensors[0].device if tensors else torch.device("cpu")
    blocks = []
    for ts, nb in kinds:
        parts = []
        for t in ts:
            if t is None:  # a missing gradient: count 0
                parts.append(None)
                continue
            part = local_part(t)
            if not (DTensor is not None and isinstance(t, DTensor)) and not plain_counts:
                part = LocalPart(part.local, part.global_shape, part.offset, counted=False)
            parts.append(part)
        present = [i for i, p in enumerate(parts) if p is not None]
        if len(present) == n_layer:
            blocks.append(stacked_block_sums(parts, nb).to(device))
            continue
        kind = torch.zeros((n_layer, nb, 3), dtype=torch.float64, device=device)
        if present:
            kind[present] = stacked_block_sums([parts[i] for i in present], nb).to(device)
        blocks.append(kind)
    out = torch.cat(blocks, dim=1)
    if reduce:
        device = _collective_device(group)
        buf = out.to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
        out = buf.to(out.device)
    return out


def sharded_block_moments(
    kinds: Sequence[tuple[Sequence[torch.Tensor | None], int]],
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """(mean, population variance, RMS) per (layer, block), float64, shape
    (n_layer, sum of n_blocks, 3): :func:`sharded_block_sums` then :func:`moments_from_sums`.
    The layout of ``hf_init.lm.recorders.block_statistics`` when ``kinds`` follows its
    ``BLOCK_WEIGHTS`` order; NaN for a missing gradient."""
    return moments_from_sums(sharded_block_sums(kinds, group))


def _collective_device(group) -> torch.device:
    """Where the reduction buffer must live for the group's backend (NCCL: the current CUDA
    device; gloo: CPU)."""
    backend = dist.get_backend(group)
    if "nccl" in str(backend).lower() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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

    The rows go through the reused float64 :func:`workspace` (as many rows per pass as
    :data:`WORKSPACE_ELEMENTS` holds), centred and squared in place, rather than a fresh float64
    copy and torch's one-pass (Welford) ``var``."""
    rows = t.detach().reshape(t.shape[0], -1)
    n = rows.shape[1]
    out = torch.empty(rows.shape[0], dtype=torch.float64, device=t.device)
    step = max(1, WORKSPACE_ELEMENTS // max(n, 1))
    for i in range(0, rows.shape[0], step):
        x = workspace(t.device, min(step, rows.shape[0] - i) * n).view(-1, n)
        x.copy_(rows[i : i + x.shape[0]])
        x.sub_(x.mean(dim=1, keepdim=True))
        out[i : i + x.shape[0]] = x.mul_(x).sum(dim=1) / n
    return out


__all__ = [
    "LocalPart",
    "Moments",
    "WORKSPACE_ELEMENTS",
    "block_sums",
    "local_part",
    "moments",
    "moments_from_sums",
    "row_variances",
    "sharded_block_moments",
    "sharded_block_sums",
    "stacked_block_sums",
    "workspace",
]
