"""Every guard stops every rank at the same step, on two CPU processes (gloo) with the fault on
one rank only:

* the divergence stop under FSDP2 (plain ``fully_shard``: accelerate does not shard on CPU): a
  non-finite entry in one rank's gradient shard makes the global gradient norm non-finite on
  both ranks; each names what its own shards hold;
* a non-finite recorded weight variance, measured and checked by the main process alone: the
  other rank raises the same line instead of going on to its next collective."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class State:
    global_step = 6
    is_world_process_zero = True


def _worker(rank, world, port, results):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from hf_init.core.cli import RunStopped
        from hf_init.lm.guards import DivergenceStop
        from hf_init.lm.modeling import build_model

        assert dist.get_world_size() == 2
        torch.manual_seed(0)
        model = build_model(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
        mesh = init_device_mesh("cpu", (world,))
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        w = model.transformer.h[1].mlp.c_proj.weight
        assert hasattr(w, "to_local") and w.to_local().shape[0] < w.shape[0]  # really sharded
        ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(rank))
        model(input_ids=ids, labels=ids).loss.backward()
        stop = DivergenceStop()
        stop.on_pre_optimizer_step(None, State(), None, model=model)  # all finite: nothing happens
        if rank == 1:  # one entry of rank 1's shard only
            w.grad.to_local().view(-1)[0] = float("nan")
        try:
            stop.on_pre_optimizer_step(None, State(), None, model=model)
            results[rank] = "not stopped"
        except RunStopped as err:
            results[rank] = str(err)
        results["records", rank] = _records_guard(rank)
    finally:
        dist.destroy_process_group()


def _records_guard(rank) -> str:
    """The Q/K/V recorder with its guard at a record step, a non-finite k weight in the main
    process's model only (the one that measures): what each rank raises."""
    from hf_init.core.cli import RunStopped
    from hf_init.lm.modeling import build_model
    from hf_init.lm.recorders import QKVVarianceCallback
    from hf_init.lm.sinks import NonFiniteRecords

    class RecordState:
        global_step = 10
        max_steps = 100
        is_world_process_zero = rank == 0

    model = build_model(n_layer=2, n_embd=16, n_head=2, vocab_size=32, n_positions=8)
    recorder = QKVVarianceCallback(every=10, guards=[NonFiniteRecords()])
    recorder.on_step_end(None, RecordState(), None, model=model)  # healthy: nobody stops
    if rank == 0:
        with torch.no_grad():
            model.transformer.h[1].attn.c_attn.weight[0, 16] = float("inf")  # a k column
    RecordState.global_step = 20
    try:
        recorder.on_step_end(None, RecordState(), None, model=model)
        return "not stopped"
    except RunStopped as err:
        return str(err)


def test_every_guard_stops_both_ranks_when_the_fault_is_on_one():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), results), nprocs=2, join=True)
        results = dict(results)
    assert results[1].startswith(
        "error: training diverged at step 7: non-finite gradient of layer 1 mlp.c_proj.weight"
    )
    assert results[0].startswith(
        "error: training diverged at step 7: a non-finite gradient on another rank"
    )
    want = "error: training diverged at step 20: non-finite variance of layer 1 k weight"
    assert results["records", 0].startswith(want)
    assert results["records", 1] == results["records", 0]
