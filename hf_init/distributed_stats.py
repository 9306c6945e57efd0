"""Exact column-block moments of sharded (FSDP2 / DTensor) weights without gathering them.

Each rank reduces the part of every recorded weight it holds to float64 (count, sum, sum of
squares) per column block (Q | K | V of GPT-2's fused ``c_attn``, one block for the other
weights); one ``all_reduce(SUM)`` of one stacked float64 tensor then gives the totals of all
layers and projections, from which mean, population variance (divide by N) and RMS follow.
No rank ever holds more than its own shard: no ``full_tensor()``, no all-gather.

Layouts. GPT-2 stores its projections as ``Conv1D`` weights of shape (in, out); ``c_attn``'s
output columns are Q, then K, then V (see :func:`hf_init.stats.split_fused`). FSDP2
(``fully_shard``) shards dim 0, the *rows*: every shard then holds all three column blocks
(its rows of Q, of K and of V), and only the row count differs between ranks (uneven when the
row count is not a multiple of the world size: torch.chunk sizes, possibly an empty shard). A
shard on dim 1 (``Shard(1)``, e.g. tensor parallelism) holds a range of *columns* that may start
or end inside a block: the local columns are cut at the global block boundaries, so each part
is added to the block it belongs to. Both are exact; the tests cover rows, columns with the
boundary inside a block, uneven and empty shards, and replicated mesh dimensions (a replica
adds nothing, so nothing is counted twice).

Numerical stability. The variance is ``sumsq/n - (sum/n)^2``; in float64 its relative rounding
error is about ``eps * (1 + mean^2/var)`` (eps = 1.1e-16) times the growth of the summation
error, which torch's pairwise ``sum`` keeps near 1 (``vector_norm().square()`` does not: ~1e-13
on 2.4M entries, so it is not used). For GPT-2 weights and gradients |mean| is far below the
std (init N(0, 0.02^2)), so nothing cancels. Measured on a 768 x 3072 block of N(mu, 0.02^2)
in 8 row shards against a two-pass float64 (numpy) variance, relative error: 1e-16 for
|mu| <= std (float32 and bf16 entries), 3e-14 at mu = 10 std, 2e-12 at mu = 100 std, 2e-8 at
mu = 1e4 std. Pairwise merging of (count, mean, M2) (Chan et al.) would only matter far beyond
what a weight or gradient block shows, so it is not used; the test
``test_sum_of_squares_does_not_cancel_at_gpt2_scale`` holds the realistic cases to 1e-13.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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
            raise ValueError(f"strided shard placement {p} is not supported (the local rows are not one range)")
        if isinstance(p, Replicate):
            counted = counted and coord[mesh_dim] == 0
        elif not isinstance(p, Shard):
            raise ValueError(f"placement {p} is not supported: reduce Partial tensors first (only Shard and Replicate)")
    shape, offset = compute_local_shape_and_global_offset(t.shape, mesh, placements)
    if tuple(local.shape) != tuple(shape):
        raise ValueError(f"local shard has shape {tuple(local.shape)}, its placements say {tuple(shape)}")
    return LocalPart(local, tuple(t.shape), tuple(int(o) for o in offset), counted)


@torch.no_grad()
def block_sums(part: LocalPart, n_blocks: int = 1) -> torch.Tensor:
    """float64 (count, sum, sum of squares) of this part's entries in each of ``n_blocks`` equal
    global column blocks: shape (n_blocks, 3). Block ``b`` is the global columns
    ``b*c : (b+1)*c`` with ``c = global_cols / n_blocks``; local columns that straddle a block
    boundary are split there. A part that is not ``counted`` gives zeros."""
    rows, cols = part.global_shape
    if cols % n_blocks:
        raise ValueError(f"{cols} columns do not split into {n_blocks} equal blocks")
    out = torch.zeros((n_blocks, 3), dtype=torch.float64)
    if not part.counted or part.local.numel() == 0:
        return out
    c = cols // n_blocks
    lo = part.offset[1]
    hi = lo + part.local.shape[1]
    x = part.local.detach()
    for b in range(n_blocks):
        a, e = max(lo, b * c), min(hi, (b + 1) * c)
        if a >= e:
            continue
        piece = x[:, a - lo:e - lo].to(torch.float64)
        out[b, 0] = piece.numel()
        out[b, 1] = piece.sum()
        out[b, 2] = (piece * piece).sum()  # pairwise sum; vector_norm().square() is ~1000x less exact
    return out


def moments_from_sums(sums: torch.Tensor) -> torch.Tensor:
    """(count, sum, sumsq) in the last dim -> (mean, population variance, RMS); a count of 0
    gives NaN (a missing gradient)."""
    n, s, q = sums.unbind(-1)
    mean = s / n
    mean_sq = q / n
    var = (mean_sq - mean * mean).clamp(min=0.0)
    return torch.stack([mean, var, mean_sq.sqrt()], dim=-1)


@torch.no_grad()
def sharded_block_sums(kinds: Sequence[tuple[Sequence[torch.Tensor | None], int]],
                       group: dist.ProcessGroup | None = None) -> torch.Tensor:
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
        raise ValueError(f"every kind needs one tensor per layer, got {[len(ts) for ts, _ in kinds]}")
    tensors = [t for ts, _ in kinds for t in ts if t is not None]
    sharded = DTensor is not None and any(isinstance(t, DTensor) for t in tensors)
    reduce = sharded and dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
    plain_counts = not reduce or dist.get_rank(group) == 0
    width = sum(nb for _, nb in kinds)
    out = torch.zeros((n_layer, width, 3), dtype=torch.float64)
    col = 0
    for ts, nb in kinds:
        for layer, t in enumerate(ts):
            if t is None:
                continue
            part = local_part(t)
            if not (DTensor is not None and isinstance(t, DTensor)) and not plain_counts:
                part = LocalPart(part.local, part.global_shape, part.offset, counted=False)
            out[layer, col:col + nb] = block_sums(part, nb)
        col += nb
    if reduce:
        device = _collective_device(group)
        buf = out.to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
        out = buf.cpu()
    return out


def sharded_block_moments(kinds: Sequence[tuple[Sequence[torch.Tensor | None], int]],
                          group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """(mean, population variance, RMS) per (layer, block), float64, shape
    (n_layer, sum of n_blocks, 3): :func:`sharded_block_sums` then :func:`moments_from_sums`.
    The layout of ``hf_init.callbacks.block_statistics`` when ``kinds`` follows its
    ``BLOCK_WEIGHTS`` order; NaN for a missing gradient."""
    return moments_from_sums(sharded_block_sums(kinds, group))


def _collective_device(group) -> torch.device:
    """Where the reduction buffer must live for the group's backend (NCCL: the current CUDA
    device; gloo: CPU)."""
    backend = dist.get_backend(group)
    if "nccl" in str(backend).lower() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


__all__ = ["LocalPart", "local_part", "block_sums", "moments_from_sums", "sharded_block_sums",
           "sharded_block_moments"]
