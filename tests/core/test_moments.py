"""Exact sharded statistics (hf_init.core.moments) against unsharded float64 references
computed independently (torch.var(unbiased=False) / explicit two-pass on the whole tensor)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import free_port

from hf_init.core.moments import (
    LocalPart,
    block_sums,
    moments_from_sums,
    sharded_block_moments,
    sharded_block_sums,
    stacked_block_sums,
)


def reference_blocks(w: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """(mean, population var, rms) of each equal column block of the whole tensor, float64."""
    x = w.detach().to(torch.float64)
    c = x.shape[1] // n_blocks
    out = []
    for b in range(n_blocks):
        blk = x[:, b * c : (b + 1) * c]
        out.append(
            [
                blk.mean().item(),
                torch.var(blk, unbiased=False).item(),
                blk.pow(2).mean().sqrt().item(),
            ]
        )
    return torch.tensor(out, dtype=torch.float64)


def parts_by_rows(w, bounds):
    return [LocalPart(w[a:b], tuple(w.shape), (a, 0)) for a, b in zip(bounds[:-1], bounds[1:])]


def parts_by_cols(w, bounds):
    return [LocalPart(w[:, a:b], tuple(w.shape), (0, a)) for a, b in zip(bounds[:-1], bounds[1:])]


def merged(parts, n_blocks):
    return moments_from_sums(sum(block_sums(p, n_blocks) for p in parts))


@pytest.fixture
def qkv():
    g = torch.Generator().manual_seed(0)
    # (in=6, out=3*5): Q = cols 0-4, K = 5-9, V = 10-14; distinct offsets so a misassigned
    # column changes the block's mean and variance.
    w = torch.randn(6, 15, generator=g, dtype=torch.float32) * 0.02
    w[:, 5:10] += 0.5
    w[:, 10:] *= 3.0
    return w


@pytest.mark.parametrize(
    "bounds",
    [[0, 3, 6], [0, 4, 6], [0, 1, 1, 6], [0, 2, 3, 5, 6]],
    ids=["even", "uneven", "empty-shard", "four-uneven"],
)
def test_row_shards_equal_unsharded(qkv, bounds):
    # FSDP2 layout: shards of rows, every shard holds all of Q, K and V's columns.
    got = merged(parts_by_rows(qkv, bounds), 3)
    torch.testing.assert_close(got, reference_blocks(qkv, 3), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "bounds",
    [[0, 8, 15], [0, 7, 15], [0, 3, 12, 15], [0, 5, 10, 15], [0, 0, 15]],
    ids=["boundary-in-K", "boundary-in-K-2", "boundaries-in-Q-and-V", "aligned", "empty"],
)
def test_column_shards_cut_inside_a_block_equal_unsharded(qkv, bounds):
    got = merged(parts_by_cols(qkv, bounds), 3)
    torch.testing.assert_close(got, reference_blocks(qkv, 3), rtol=1e-12, atol=1e-15)


def test_2d_shards_and_counts(qkv):
    # A 2 x 2 grid of uneven (row, column) shards, column cut inside K; counts are exact.
    parts = [
        LocalPart(qkv[r0:r1, c0:c1], tuple(qkv.shape), (r0, c0))
        for r0, r1 in ((0, 4), (4, 6))
        for c0, c1 in ((0, 7), (7, 15))
    ]
    sums = sum(block_sums(p, 3) for p in parts)
    assert sums[:, 0].tolist() == [30.0, 30.0, 30.0]
    torch.testing.assert_close(
        moments_from_sums(sums), reference_blocks(qkv, 3), rtol=1e-12, atol=1e-15
    )


def test_stacked_parts_of_mixed_layouts_equal_numpy_sums(qkv):
    # one call over parts that cannot share a buffer: two whole layers, a row shard, a column shard
    # cut inside K, an uncounted replica and an empty shard; each row of the result is compared
    # with float64 numpy sums of that part's entries in each global block
    w2 = qkv * 2 - 0.1
    parts = [
        LocalPart(qkv, (6, 15), (0, 0)),
        LocalPart(qkv[2:5], (6, 15), (2, 0)),
        LocalPart(w2, (6, 15), (0, 0)),
        LocalPart(w2[:, 3:12], (6, 15), (0, 3)),
        LocalPart(qkv, (6, 15), (0, 0), counted=False),
        LocalPart(qkv[:0], (6, 15), (6, 0)),
    ]
    got = stacked_block_sums(parts, 3)
    assert got.shape == (6, 3, 3) and got.dtype == torch.float64
    for i, part in enumerate(parts):
        full = np.full((6, 15), np.nan)
        r, c = part.offset
        full[r : r + part.local.shape[0], c : c + part.local.shape[1]] = part.local.double().numpy()
        for b in range(3):
            x = full[:, b * 5 : (b + 1) * 5]
            x = x[~np.isnan(x)] if part.counted else np.zeros(0)
            np.testing.assert_allclose(
                got[i, b].numpy(), [x.size, x.sum(), (x * x).sum()], rtol=1e-13, atol=1e-15
            )


def test_replica_adds_nothing(qkv):
    part = LocalPart(qkv, tuple(qkv.shape), (0, 0), counted=False)
    assert torch.equal(block_sums(part, 3), torch.zeros(3, 3, dtype=torch.float64))


def test_plain_tensors_without_process_group_match_reference(qkv):
    # The layout of callbacks.block_statistics: kinds in order, missing gradient -> NaN.
    other = qkv[:, :5].clone()
    got = sharded_block_moments([([qkv, qkv * 2], 3), ([other, None], 1)])
    assert got.shape == (2, 4, 3)
    torch.testing.assert_close(got[0, :3], reference_blocks(qkv, 3), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got[1, :3], reference_blocks(qkv * 2, 3), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got[0, 3], reference_blocks(other, 1)[0], rtol=1e-12, atol=1e-15)
    assert torch.isnan(got[1, 3]).all()


def test_plain_tensors_in_a_process_group_are_each_ranks_own_without_a_collective(qkv, monkeypatch):
    """DDP replicas (plain tensors) with a 2-rank group up, on rank 1: the moments are the whole
    tensor's and no collective is called (a rank that reduced alone would hang its peers)."""
    from hf_init.core import moments as m

    calls = []
    monkeypatch.setattr(m.dist, "is_available", lambda: True)
    monkeypatch.setattr(m.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(m.dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(m.dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(m.dist, "all_reduce", lambda *a, **k: calls.append(a))
    got = sharded_block_moments([([qkv], 3)])
    torch.testing.assert_close(got[0], reference_blocks(qkv, 3), rtol=1e-12, atol=1e-15)
    assert calls == []


@pytest.mark.parametrize("mean_over_std", [0.0, 0.05, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sum_of_squares_does_not_cancel_at_gpt2_scale(mean_over_std, dtype):
    # GPT-2 124M blocks: c_attn (768, 3*768) and mlp c_fc (768, 3072), entries ~ N(mu, 0.02^2),
    # in 8 row shards (8 ranks). Reference: numpy two-pass float64 variance of each block.
    g = torch.Generator().manual_seed(1)
    for shape, n_blocks in (((768, 2304), 3), ((768, 3072), 1)):
        w = (torch.randn(shape, generator=g) * 0.02 + mean_over_std * 0.02).to(dtype)
        bounds = [i * 96 for i in range(9)]
        got = merged(parts_by_rows(w, bounds), n_blocks)
        x = w.to(torch.float64).numpy()
        c = shape[1] // n_blocks
        for b in range(n_blocks):
            blk = x[:, b * c : (b + 1) * c]
            ref_var = np.mean((blk - blk.mean()) ** 2)
            assert abs(got[b, 1].item() - ref_var) / ref_var < 1e-13
            assert abs(got[b, 0].item() - blk.mean()) <= 1e-13 * blk.std()


# ---- real FSDP2 shards, 2 processes, gloo --------------------------------------------------


def _fsdp_worker(rank: int, world: int, port: int):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
    from transformers import GPT2Config, GPT2LMHeadModel

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        # n_embd 30: c_attn is (30, 90), 15 rows per rank; mlp c_fc (30, 120).
        model = GPT2LMHeadModel(
            GPT2Config(
                n_layer=2,
                n_embd=30,
                n_head=2,
                vocab_size=50,
                n_positions=8,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
            )
        )
        ref_model = GPT2LMHeadModel(model.config)
        ref_model.load_state_dict(model.state_dict())  # unsharded copy made before sharding
        paths = (("attn.c_attn", 3), ("attn.c_proj", 1), ("mlp.c_fc", 1), ("mlp.c_proj", 1))
        ids = torch.randint(
            0, 50, (2, 8), generator=torch.Generator().manual_seed(1)
        )  # same batch on both ranks
        ref_model(input_ids=ids, labels=ids).loss.backward()

        mesh = init_device_mesh("cpu", (world,))
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        model(input_ids=ids, labels=ids).loss.backward()

        def kinds(m, grads):
            ws = [[b.get_submodule(p).weight for b in m.transformer.h] for p, _ in paths]
            return [
                ([w.grad if grads else w for w in ws_p], nb) for ws_p, (_, nb) in zip(ws, paths)
            ]

        for ts, _ in kinds(model, False) + kinds(model, True):
            for t in ts:
                assert isinstance(t, DTensor) and t.placements == (Shard(0),), (
                    type(t),
                    getattr(t, "placements", None),
                )
                assert t.to_local().numel() < t.numel(), "parameter is not sharded"

        # No gather: full_tensor / redistribute / all_gather raise; all_reduce is counted.
        calls = []
        real_all_reduce = dist.all_reduce

        def counting_all_reduce(*a, **k):
            calls.append(a[0].shape)
            return real_all_reduce(*a, **k)

        def forbidden(*a, **k):
            raise AssertionError("a gather was called")

        saved = {
            (DTensor, "full_tensor"): DTensor.full_tensor,
            (DTensor, "redistribute"): DTensor.redistribute,
            **{
                (dist, n): getattr(dist, n)
                for n in ("all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast")
            },
        }
        for owner, name in saved:
            setattr(owner, name, forbidden)
        dist.all_reduce = counting_all_reduce
        try:
            got_w = sharded_block_moments(kinds(model, False))
            n_calls_w = len(calls)
            got_g = sharded_block_moments(kinds(model, True))
            # the callback's path: block_statistics on the sharded model, one all-reduce each
            from hf_init.lm.recorders import block_statistics

            cb_w, cb_g = block_statistics(model), block_statistics(model, grads=True)
        finally:
            for (owner, name), fn in saved.items():
                setattr(owner, name, fn)
            dist.all_reduce = real_all_reduce
        assert n_calls_w == 1 and len(calls) == 4, calls
        assert tuple(calls[0]) == (2, 6, 3), calls
        torch.testing.assert_close(cb_w, got_w, rtol=0, atol=0)
        torch.testing.assert_close(cb_g, got_g, rtol=0, atol=0)

        for layer, b in enumerate(ref_model.transformer.h):
            col = 0
            for p, nb in paths:
                w = b.get_submodule(p).weight
                torch.testing.assert_close(
                    got_w[layer, col : col + nb], reference_blocks(w, nb), rtol=1e-12, atol=1e-15
                )
                # float32 backward in a different reduction order: float32 tolerance.
                torch.testing.assert_close(
                    got_g[layer, col : col + nb], reference_blocks(w.grad, nb), rtol=1e-4, atol=1e-9
                )
                col += nb

        # Column shards with a boundary inside K (15 columns -> 8 | 7), and a replicated mesh dim.
        w = torch.randn(6, 15, generator=torch.Generator().manual_seed(2))
        w[:, 5:10] += 0.5
        col_sharded = distribute_tensor(w, mesh, [Shard(1)])
        assert col_sharded.to_local().shape == ((6, 8) if rank == 0 else (6, 7))
        sums = sharded_block_sums([([col_sharded], 3)])
        assert sums[0, :, 0].tolist() == [30.0, 30.0, 30.0]
        torch.testing.assert_close(
            moments_from_sums(sums)[0], reference_blocks(w, 3), rtol=1e-12, atol=1e-15
        )
        mesh2 = init_device_mesh("cpu", (world, 1), mesh_dim_names=("rep", "shard"))
        replicated = distribute_tensor(w, mesh2, [Replicate(), Shard(0)])
        sums = sharded_block_sums([([replicated], 3)])
        assert sums[0, :, 0].tolist() == [30.0, 30.0, 30.0], "a replica was counted twice"
        torch.testing.assert_close(
            moments_from_sums(sums)[0], reference_blocks(w, 3), rtol=1e-12, atol=1e-15
        )
        # A plain (unsharded) tensor next to DTensors counts once, not once per rank.
        sums = sharded_block_sums([([col_sharded], 3), ([w], 1)])
        assert sums[0, :, 0].tolist() == [30.0, 30.0, 30.0, 90.0]
        with pytest.raises(ValueError, match="Partial"):
            sharded_block_sums([([DTensor.from_local(w, mesh, [Partial()])], 3)])
    finally:
        dist.destroy_process_group()
    from conftest import leave_spawned_rank

    leave_spawned_rank()


def test_real_fsdp2_shards_on_two_cpu_processes_equal_unsharded_without_gather():
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_worker, args=(2, free_port()), nprocs=2, join=True)


# ---- the reused float64 workspace: bounded passes give the same sums ------------------------


def test_layers_in_several_workspace_passes_equal_numpy(monkeypatch):
    # workspaces of one layer's part (12 passes), smaller than a part, and of 4 parts (3 passes):
    # 12 layers of (8, 3*6), Q|K|V blocks cut by view
    from hf_init.core import moments as D

    g = torch.Generator().manual_seed(3)
    ws = [torch.randn(8, 18, generator=g) * 0.1 + 0.3 * i for i in range(12)]
    # the buffer held is the bound, or one part where a part alone is larger than the bound
    for elements, held in ((8 * 18, 8 * 18), (10, 8 * 18), (8 * 18 * 4, 8 * 18 * 4)):
        monkeypatch.setattr(D, "WORKSPACE_ELEMENTS", elements)
        monkeypatch.setattr(D, "_WORKSPACES", {})
        got = D.stacked_block_sums([D.LocalPart(w, (8, 18), (0, 0)) for w in ws], 3)
        assert D._WORKSPACES[torch.device("cpu")].numel() == held
        for i, w in enumerate(ws):
            x = w.double().numpy().reshape(8, 3, 6)
            for b in range(3):
                blk = x[:, b, :]
                assert got[i, b, 0].item() == blk.size
                assert got[i, b, 1].item() == pytest.approx(blk.sum(), rel=1e-13)
                assert got[i, b, 2].item() == pytest.approx((blk**2).sum(), rel=1e-13)
    first = D.workspace("cpu", 10)
    assert D.workspace("cpu", 5).data_ptr() == first.data_ptr()  # reused, not made anew


def test_row_variances_two_pass_equal_numpy_even_far_from_zero(monkeypatch):
    from hf_init.core import moments as D
    from hf_init.core.moments import row_variances

    g = torch.Generator().manual_seed(4)
    t = torch.randn(7, 5, 9, generator=g) * 0.01 + torch.tensor(
        [0.0, 1.0, 1e3, -5.0, 0.0, 2.0, 1e4]
    ).view(7, 1, 1)
    ref = t.double().numpy().reshape(7, -1).var(axis=1)  # numpy: two-pass, divide by N
    # all rows at once, one row per pass, two (2, 2, 2 and a last pass of 1), a workspace
    # smaller than a row
    for elements in (10**6, 45, 90, 1):
        monkeypatch.setattr(D, "WORKSPACE_ELEMENTS", elements)
        got = row_variances(t).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-10)


def _fake_dtensor(monkeypatch, local, shape, coordinate, placements=()):
    """What local_part reads of a DTensor (shape, mesh coordinate, placements, local shard), for
    the cases a one-process test cannot build (a rank outside the mesh, a strided shard, a mesh
    of three replicas), installed as hf_init.core.moments' DTensor; torch's placement arithmetic,
    which needs a real mesh, gives the whole tensor at (0, 0). Returns the class."""
    from hf_init.core import moments

    class FakeDTensor:
        device_mesh = type("Mesh", (), {"get_coordinate": staticmethod(lambda: coordinate)})()

        def __init__(self):
            self.shape, self.placements = shape, placements

        def dim(self):
            return 2

        def to_local(self):
            return local

    monkeypatch.setattr(moments, "DTensor", FakeDTensor)
    monkeypatch.setattr(
        moments, "compute_local_shape_and_global_offset", lambda shape, mesh, p: (shape, (0, 0))
    )
    return FakeDTensor


def test_a_rank_outside_the_mesh_holds_an_empty_uncounted_part(qkv, monkeypatch):
    """A DTensor on a mesh this rank is not in (get_coordinate() is None): its part is the empty
    (0, 0) corner of the global shape, not counted, and adds nothing beside a real part."""
    from hf_init.core import moments

    off_mesh = _fake_dtensor(monkeypatch, qkv[:0, :0], qkv.shape, None)
    part = moments.local_part(off_mesh())
    assert part.local.shape == (0, 0) and part.offset == (0, 0) and part.counted is False
    assert part.global_shape == tuple(qkv.shape)
    whole = LocalPart(qkv, tuple(qkv.shape), (0, 0))
    torch.testing.assert_close(
        stacked_block_sums([part, whole], 3)[1], block_sums(whole, 3), rtol=0, atol=0
    )
    assert torch.equal(stacked_block_sums([part], 3), torch.zeros(1, 3, 3, dtype=torch.float64))


def test_a_strided_shard_is_refused(qkv, monkeypatch):
    """A _StridedShard placement (FSDP2 beside tensor parallelism) holds rows that are not one
    range: local_part refuses it by name instead of placing them wrongly."""
    from hf_init.core import moments

    strided_shard = (moments._StridedShard(0, split_factor=2),)
    strided = _fake_dtensor(monkeypatch, qkv, qkv.shape, [0], strided_shard)
    with pytest.raises(ValueError, match="strided shard placement .* is not supported"):
        moments.local_part(strided())


def test_a_replicated_weight_is_counted_on_mesh_coordinate_0_alone(qkv, monkeypatch):
    """Replicate on a mesh dim: the replica at coordinate 0 of that dim counts, every other one
    (1, 2, ... on a mesh of three replicas) does not, whatever its other dims say. A plain tensor
    is the whole weight at offset (0, 0), counted."""
    from torch.distributed.tensor import Replicate, Shard

    from hf_init.core import moments

    plain = moments.local_part(qkv)
    assert (plain.offset, plain.global_shape, plain.counted) == ((0, 0), tuple(qkv.shape), True)
    cases = [([0], (Replicate(),), True), ([1], (Replicate(),), False),
             ([2], (Replicate(),), False), ([1, 0], (Shard(0), Replicate()), True),
             ([0, 2], (Shard(0), Replicate()), False)]  # fmt: skip
    for coordinate, placements, counted in cases:
        fake = _fake_dtensor(monkeypatch, qkv, qkv.shape, coordinate, placements)
        assert moments.local_part(fake()).counted is counted, (coordinate, placements)


def test_block_sums_take_one_block_unless_told():
    """n_blocks defaults to 1: the whole weight's (count, sum, sum of squares) by hand."""
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    part = LocalPart(w, (3, 4), (0, 0))
    want = torch.tensor([[12.0, 66.0, 506.0]], dtype=torch.float64)
    assert torch.equal(block_sums(part), want)
    assert torch.equal(stacked_block_sums([part, part]), torch.stack([want, want]))


def test_plain_tensors_beside_dtensors_count_on_rank_0_alone_of_three(qkv, monkeypatch):
    """On a process group of three ranks (faked here: world size 3, this rank 0, 1 or 2, the
    all_reduce recorded), a plain weight next to a DTensor is counted by rank 0 only, so the
    summed totals hold it once; the DTensor's replica counts on its mesh coordinate 0."""
    import torch.distributed as dist

    from hf_init.core import moments

    reduced = []
    fake = _fake_dtensor(monkeypatch, qkv, qkv.shape, [0], (moments.Replicate(),))
    monkeypatch.setattr(moments, "_collective_device", lambda group: torch.device("cpu"))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 3)
    monkeypatch.setattr(dist, "all_reduce", lambda buf, op=None, group=None: reduced.append(op))
    n = float(qkv.numel())
    for rank, plain_count in ((0, n), (1, 0.0), (2, 0.0)):
        monkeypatch.setattr(dist, "get_rank", lambda group=None, r=rank: r)
        sums = moments.sharded_block_sums([([qkv], 1), ([fake()], 1)])
        assert sums[0, :, 0].tolist() == [plain_count, n], rank
    assert reduced == [dist.ReduceOp.SUM] * 3


def test_moments_of_a_tensor_are_numpys_population_moments():
    """mean, variance (ddof=0), RMS and count of every entry, against numpy in float64; with a
    mean 1e6 times the spread the two-pass variance still holds."""
    from hf_init.core.moments import moments

    x = np.random.default_rng(5).normal(size=(7, 9))
    for values in (x, 1e6 + x * 1.0):
        got = moments(torch.tensor(values, dtype=torch.float64))
        want = (values.mean(), values.var(), np.sqrt(np.mean(values**2)), values.size)
        assert (got.mean, got.var, got.rms, got.numel) == (
            pytest.approx(want[0], rel=1e-12), pytest.approx(want[1], rel=1e-6),
            pytest.approx(want[2], rel=1e-12), want[3],
        )  # fmt: skip


def test_the_reduction_buffer_goes_to_the_gpu_for_nccl_only(monkeypatch):
    """NCCL reduces on the current CUDA device; gloo on the CPU, even where a GPU is present;
    NCCL without CUDA (not a real setup) falls back to the CPU (faked backends and devices)."""
    import torch.distributed as dist

    from hf_init.core import moments

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    for backend, cuda, want in (("nccl", True, torch.device("cuda", 1)),
                                ("gloo", True, torch.device("cpu")),
                                ("nccl", False, torch.device("cpu"))):  # fmt: skip
        monkeypatch.setattr(dist, "get_backend", lambda group=None, b=backend: b)
        monkeypatch.setattr(torch.cuda, "is_available", lambda c=cuda: c)
        assert moments._collective_device(None) == want, (backend, cuda)
