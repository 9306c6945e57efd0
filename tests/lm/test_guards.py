"""The guards (hf_init/lm/guards.py).

In a Trainer, the divergence stop reads the gradient norm the Trainer computed (checked against a
norm computed here from the gradients), stops before the bad update (the weights are those of the
step before), names the sub-layer where the forward pass first became non-finite (the fault is
planted here), and runs that forward pass again with the step's dropout masks.

Every guard stops every rank at the same step, on two CPU processes (gloo) with the fault on one
rank only:

* the divergence stop under FSDP2 (plain ``fully_shard``: accelerate does not shard on CPU): a
  non-finite entry in one rank's gradient shard makes the global gradient norm non-finite on
  both ranks; each names what its own shards hold;
* a non-finite recorded weight variance, measured and checked by the main process alone: the
  other rank raises the same line instead of going on to its next collective."""

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_init.core.cli import RunStopped
from hf_init.lm.guards import DivergenceStop
from hf_init.lm.modeling import build_model
from hf_init.lm.spikes import StepValues


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
        del model, w, stop  # no FSDP state or gradient shard outlives the group
        dist.barrier()  # both ranks done with every collective before either tears gloo down
    finally:
        dist.destroy_process_group()
    from conftest import leave_spawned_rank

    leave_spawned_rank()


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
        mp.spawn(_worker, args=(2, free_port(), results), nprocs=2, join=True)
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


VOCAB, T = 40, 12


def tiny_model(dropout=0.0):
    torch.manual_seed(0)
    return build_model(
        n_layer=3,
        n_embd=24,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=T,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )


class Blocks(torch.utils.data.Dataset):
    def __init__(self, n=32):
        self.ids = torch.randint(0, VOCAB, (n, T), generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def trainer_with_stop(tmp_path, model, before=(), max_grad_norm=1.0, max_steps=4):
    """(a Trainer with the ``before`` callbacks, then a DivergenceStop reading the Trainer's
    StepValues, as the job builds them; the stop)."""
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_grad_norm=max_grad_norm,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    t = Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=list(before))
    stop = DivergenceStop(StepValues(t))
    t.add_callback(stop)
    return t, stop


class NormSeen(TrainerCallback):
    """Before the stop (callbacks run in order): the norm the stop will read, and the norm of the
    gradients the optimizer is about to apply, computed here."""

    stop = None

    def __init__(self):
        self.pairs = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        grads = torch.cat([p.grad.flatten().double() for p in model.parameters()])
        step, kept = self.stop.values.grad_norm
        assert step == state.global_step
        self.pairs.append((float(kept), torch.linalg.vector_norm(grads).item()))


@pytest.mark.parametrize("max_grad_norm", [0.0, 1e9])  # no clipping; clipping that scales by 1
def test_the_stop_reads_the_norm_the_trainer_computed(tmp_path, max_grad_norm):
    seen = NormSeen()
    t, seen.stop = trainer_with_stop(tmp_path, tiny_model(), [seen], max_grad_norm=max_grad_norm)
    t.train()
    assert len(seen.pairs) == 4
    for kept, here in seen.pairs:
        assert kept == pytest.approx(here, rel=1e-5)


def test_a_healthy_step_reads_the_norm_not_the_gradients():
    model = tiny_model()
    ids = Blocks(2).ids
    model(input_ids=ids, labels=ids).loss.backward()
    model.transformer.h[1].mlp.c_fc.weight.grad[0, 0] = float("nan")

    values = SimpleNamespace(grad_norm=(6, torch.tensor(2.5)))  # the Trainer's norm: finite
    stop = DivergenceStop(values)  # State: step 6
    stop.on_pre_optimizer_step(None, State(), None, model=model)  # the gradients are not read
    values.grad_norm = (5, torch.tensor(2.5))  # another step's norm is not used: its own norm
    with pytest.raises(RunStopped, match=r"diverged at step 7: non-finite gradient of layer 1"):
        stop.on_pre_optimizer_step(None, State(), None, model=model)


class PlantInf(TrainerCallback):
    """At the start of step ``at`` (before its forward pass): one entry of layer 1's mlp.c_fc
    weight becomes inf; keeps every weight as it was after the step before."""

    def __init__(self, at):
        self.at, self.before = at, None

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step + 1 == self.at:
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
            with torch.no_grad():
                model.transformer.h[1].mlp.c_fc.weight[0, 0] = float("inf")


@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0])
def test_stops_before_the_update_naming_the_first_non_finite_sub_layer(tmp_path, max_grad_norm):
    model = tiny_model()
    plant = PlantInf(at=3)
    t, _ = trainer_with_stop(tmp_path, model, [plant], max_grad_norm=max_grad_norm)
    with pytest.raises(RunStopped) as err:
        t.train()
    assert str(err.value).startswith(
        "error: training diverged at step 3: the forward pass first became non-finite at the "
        "output of layer 1 mlp (mlp.c_fc / mlp.c_proj weights)"
    )
    assert t.state.global_step == 2
    for name, p in model.named_parameters():  # update 3 was not applied
        if name != "transformer.h.1.mlp.c_fc.weight":
            assert torch.equal(p.detach(), plant.before[name]), name


def test_the_forward_pass_runs_again_with_the_steps_dropout_masks():
    model = tiny_model(dropout=0.5).train()
    stop = DivergenceStop()
    stop.on_train_begin(None, None, None, model=model)
    losses = []
    model.register_forward_hook(lambda m, a, out: losses.append(out.loss.item()))
    ids = Blocks(4).ids
    model(input_ids=ids, labels=ids)
    model(input_ids=ids, labels=ids)  # other masks: the kept random state is this pass's
    assert losses[0] != losses[1]
    with torch.no_grad():
        assert stop.first_non_finite_output(model) is None
    assert losses[2] == losses[1]
    stop.on_train_end(None, None, None)


def test_the_forward_hook_is_registered_once_and_only_on_a_model():
    """A second on_train_begin (a second trainer.train()) keeps the one hook; no model: none;
    on_train_end removes it."""
    model = tiny_model()
    stop = DivergenceStop()
    stop.on_train_begin(None, None, None, model=None)
    assert len(model._forward_pre_hooks) == 0
    stop.on_train_begin(None, None, None, model=model)
    stop.on_train_begin(None, None, None, model=model)
    assert len(model._forward_pre_hooks) == 1
    stop.on_train_end(None, None, None)
    assert len(model._forward_pre_hooks) == 0
