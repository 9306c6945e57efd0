"""The recorders: the record steps of the protocol (hand-listed), QKVVarianceCallback's numbers
against manual numpy computations, the learning-rate records, JSONL and TensorBoard sinks."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_init.core.records import make_record
from hf_init.lm.families import GPT2
from hf_init.lm.modeling import build_model
from hf_init.lm.recorders import (
    QKVVarianceCallback,
    StepRecorder,
    block_statistics,
    build_recorders,
    unwrap_model,
)
from hf_init.lm.sinks import JsonlSink, TensorBoardSink

N_LAYER, D, VOCAB, T = 3, 24, 40, 12


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = build_model(
        init_scheme="gpt2",
        n_layer=N_LAYER,
        n_embd=D,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=T,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    with torch.no_grad():  # make Q, K and V differ in mean and scale so a wrong split shows
        for i, block in enumerate(model.transformer.h):
            w = block.attn.c_attn.weight
            w[:, :D] = w[:, :D] * (1 + i) + 0.01
            w[:, D : 2 * D] *= 3.0
            w[:, 2 * D :] -= 0.02
    return model


class Blocks(torch.utils.data.Dataset):
    def __init__(self, n=32, seed=1):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, T), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def manual_qkv(c_attn_weight):
    """Independent split and population variance: columns [0:d], [d:2d], [2d:3d] of (in, out)."""
    w = c_attn_weight.detach().double().numpy()
    d = w.shape[1] // 3
    return {name: float(np.var(w[:, i * d : (i + 1) * d])) for i, name in enumerate("qkv")}


class Snapshots(TrainerCallback):
    """Copies of every layer's c_attn weight after each step (and at the start)."""

    def __init__(self):
        self.weights = {}

    def _take(self, step, model):
        self.weights[step] = [b.attn.c_attn.weight.detach().clone() for b in model.transformer.h]

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._take(state.global_step, model)

    def on_step_end(self, args, state, control, model=None, **kw):
        self._take(state.global_step, model)


def train(
    tmp_path,
    every,
    max_steps=7,
    tensorboard=False,
    lr=0.05,
    optim="sgd",
    logging_steps=100,
    dataset=None,
    loss_type="ForCausalLM",
    **extra,
):
    model = tiny_model()
    model.loss_type = loss_type
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=lr,
        optim=optim,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **extra,
    )
    sinks = [JsonlSink(tmp_path / "variance.jsonl")]
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        sinks.append(TensorBoardSink(SummaryWriter(log_dir=str(tmp_path / "runs" / "variance"))))
    cb, snaps = QKVVarianceCallback(sinks, every=every), Snapshots()
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset or Blocks(), callbacks=[cb, snaps]
    )
    trainer.train()
    return read_lines(tmp_path / "variance.jsonl"), snaps, trainer


def read_lines(path):
    """The JSONL file read by hand (one record per (step, layer, role)) as one dict per
    (step, layer): ``{"step", "layer", role: {statistic: value}}``."""
    out = {}
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        row = out.setdefault(
            (rec["step"], rec["layer"]), {"step": rec["step"], "layer": rec["layer"]}
        )
        assert rec["role"] not in row, "duplicate (step, layer, role) line"
        row[rec["role"]] = {k: v for k, v in rec.items() if k not in ("step", "layer", "role")}
    return list(out.values())


def test_weight_variances_equal_manual_computation(tmp_path):
    records, snaps, _ = train(tmp_path, every=3)
    assert records, "no records written"
    for r in records:
        expected = manual_qkv(snaps.weights[r["step"]][r["layer"]])
        for name in "qkv":
            assert r[name]["var"] == pytest.approx(expected[name], rel=1e-12), (
                r["step"],
                r["layer"],
                name,
            )
        w = snaps.weights[r["step"]][r["layer"]].double().numpy()
        assert r["q"]["mean"] == pytest.approx(w[:, :D].mean(), rel=1e-10, abs=1e-15)
        assert r["v"]["rms"] == pytest.approx(np.sqrt((w[:, 2 * D :] ** 2).mean()), rel=1e-12)
    # the deliberately different blocks really are told apart
    first = records[0]
    assert len({round(first[n]["var"], 12) for n in "qkv"}) == 3
    # every block weight of the layout is recorded, with the statistics the format names
    assert set(first) - {"step", "layer"} == {"q", "k", "v", "attn_proj", "mlp_fc", "mlp_proj"}
    assert all(set(first[n]) == {"var", "mean", "rms", "grad_var", "grad_rms"} for n in "qkv")


def test_gradient_variance_is_the_update_that_step_applied(tmp_path):
    # plain SGD, constant lr, no clipping, no weight decay: W_s = W_{s-1} - lr * g_s exactly, so the
    # gradient applied at step s is (W_{s-1} - W_s) / lr, computed from independent weight snapshots
    lr = 0.05
    records, snaps, _ = train(tmp_path, every=1, max_steps=4, lr=lr)
    assert all(r["q"]["grad_var"] is None for r in records if r["step"] == 0)
    checked = 0
    for r in records:
        if r["step"] == 0:
            continue
        g = (
            (
                snaps.weights[r["step"] - 1][r["layer"]] - snaps.weights[r["step"]][r["layer"]]
            ).double()
            / lr
        ).numpy()
        for i, name in enumerate("qkv"):
            assert r[name]["grad_var"] == pytest.approx(np.var(g[:, i * D : (i + 1) * D]), rel=1e-4)
        checked += 1
    assert checked == 4 * N_LAYER


def test_jsonl_has_one_line_per_recorded_step_and_layer(tmp_path):
    records, _, _ = train(tmp_path, every=3, max_steps=7)
    keys = [(r["step"], r["layer"]) for r in records]
    assert len(keys) == len(set(keys)), "duplicate (step, layer) lines"
    assert sorted(keys) == [(s, layer) for s in (0, 3, 6, 7) for layer in range(N_LAYER)]


@pytest.mark.parametrize("loss_type, factor", [("ForCausalLM", 1.0), (None, (T - 1) / T)])
def test_accumulated_gradient_is_the_mean_over_micro_batches_not_the_sum(
    tmp_path, loss_type, factor
):
    # One step of 2 micro-batches of 4 covers the whole 8-block set: whatever the order, the
    # gradient applied is that of the mean token loss over all 8 blocks (stock forward, by hand),
    # not the sum (4x the variance); loss_type None gives (T-1)/T of it (docs/traps.md).
    data = Blocks(n=8)
    records, _, _ = train(
        tmp_path,
        every=1,
        max_steps=1,
        dataset=data,
        gradient_accumulation_steps=2,
        loss_type=loss_type,
    )
    model = tiny_model()
    model(input_ids=data.ids, labels=data.ids).loss.backward()
    for r in (r for r in records if r["step"] == 1):
        g = factor * model.transformer.h[r["layer"]].attn.c_attn.weight.grad.double().numpy()
        for i, name in enumerate("qkv"):
            assert r[name]["grad_var"] == pytest.approx(np.var(g[:, i * D : (i + 1) * D]), rel=1e-5)


@pytest.mark.parametrize("logging_steps, max_steps", [(0.25, 8), (0.3, 7), (3, 7), (1, 3)])
def test_default_interval_is_the_trainers_logging_interval(tmp_path, logging_steps, max_steps):
    # TrainingArguments: logging_steps < 1 is a share of the total steps, ceil(share * max_steps)
    import math

    k = math.ceil(logging_steps * max_steps) if logging_steps < 1 else logging_steps
    records, _, _ = train(tmp_path, every=None, max_steps=max_steps, logging_steps=logging_steps)
    assert sorted({r["step"] for r in records}) == sorted(
        {0, max_steps, *range(k, max_steps + 1, k)}
    )


@pytest.mark.parametrize("logging_steps, max_steps, expected", [(0.25, 8, 2), (0.3, 7, 3),
                                                              (0.5, 0, 1), (4, 9, 4)])  # fmt: skip
def test_interval_of_a_state_the_trainer_did_not_prepare(logging_steps, max_steps, expected):
    """Without state.logging_steps the interval comes from args.logging_steps, a fraction < 1
    turned into ceil(fraction * max_steps) as TrainerState.compute_steps does (1 when max_steps
    is unknown)."""
    from types import SimpleNamespace

    recorder = StepsSeen(None, [])
    state = SimpleNamespace(logging_steps=None, max_steps=max_steps)
    assert recorder.interval(SimpleNamespace(logging_steps=logging_steps), state) == expected


def test_gradient_accumulation_steps_count_optimizer_steps(tmp_path):
    records, _, trainer = train(tmp_path, every=2, max_steps=4, gradient_accumulation_steps=2)
    assert trainer.state.global_step == 4
    assert sorted({r["step"] for r in records}) == [0, 2, 4]
    assert all(
        r["k"]["grad_var"] is not None and r["k"]["grad_var"] > 0 for r in records if r["step"] > 0
    )


def test_tensorboard_events_hold_qkv_scalars_for_every_layer(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records, _, _ = train(tmp_path, every=3, max_steps=7, tensorboard=True)
    event_dirs = {p.parent for p in Path(tmp_path, "runs").rglob("events.out.tfevents.*")}
    assert len(event_dirs) == 1
    acc = EventAccumulator(str(event_dirs.pop()), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    by_key = {(r["step"], r["layer"]): r for r in records}
    for layer in range(N_LAYER):
        for name in "qkv":
            tag = f"{name}_var/layer_{layer:02d}"
            assert tag in tags, tag
            events = acc.Scalars(tag)
            assert [e.step for e in events] == [0, 3, 6, 7]
            for e in events:  # TensorBoard stores float32
                assert e.value == pytest.approx(by_key[(e.step, layer)][name]["var"], rel=1e-6)
            assert [e.step for e in acc.Scalars(f"{name}_grad_var/layer_{layer:02d}")] == [3, 6, 7]
    # the custom-scalars layout (one chart per projection overlaying all layers) is there
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout_events = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(layout_events[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["Q variance"] == [r"q_var/layer_\d+"]
    assert charts["V gradient variance"] == [r"v_grad_var/layer_\d+"]


def test_wrapped_models_are_unwrapped():
    model = tiny_model()

    class Wrapper(torch.nn.Module):  # stands in for DDP: the model under .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    compiled = torch.compile(model)  # not run: only the _orig_mod wrapper matters here
    for wrapped in (Wrapper(model), compiled, Wrapper(compiled)):
        assert unwrap_model(wrapped) is model
        stats = block_statistics(wrapped)
        for layer, block in enumerate(model.transformer.h):
            expected = manual_qkv(block.attn.c_attn.weight)
            assert stats[layer, :3, 1].tolist() == pytest.approx(
                [expected[n] for n in "qkv"], rel=1e-12
            )
        mlp = model.transformer.h[1].mlp.c_fc.weight.detach().double().numpy()
        assert float(stats[1, 4, 1]) == pytest.approx(np.var(mlp), rel=1e-12)


def test_bad_interval_is_refused():
    with pytest.raises(ValueError, match="interval"):
        QKVVarianceCallback(every=0)


def test_statistics_of_bf16_weights_are_exact_float64_moments():
    model = tiny_model().to(torch.bfloat16)
    stats = block_statistics(model)
    for layer, block in enumerate(model.transformer.h):
        w = block.attn.c_attn.weight.detach().double().numpy()  # bf16 values, exactly representable
        for i in range(3):  # q, k, v
            assert stats[layer, i, 1].item() == pytest.approx(
                np.var(w[:, i * D : (i + 1) * D]), rel=1e-12
            )


def test_every_role_equals_float64_torch_var_of_the_whole_part():
    # independent reference: torch.var(unbiased=False) in float64 of each part cut by hand; the
    # Q block is shifted far from zero (mean 10 std) so a sum-of-squares shortcut would show
    model = tiny_model()
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight[:, :D] += 0.2
    stats = block_statistics(model)
    for layer, block in enumerate(model.transformer.h):
        a = block.attn.c_attn.weight.detach().double()
        parts = {
            "q": a[:, :D],
            "k": a[:, D : 2 * D],
            "v": a[:, 2 * D :],
            "attn_proj": block.attn.c_proj.weight,
            "mlp_fc": block.mlp.c_fc.weight,
            "mlp_proj": block.mlp.c_proj.weight,
        }
        for i, (role, w) in enumerate(parts.items()):
            w = w.detach().double()
            ref = torch.stack([w.mean(), torch.var(w, unbiased=False), w.pow(2).mean().sqrt()])
            torch.testing.assert_close(stats[layer, i], ref, rtol=1e-12, atol=0), (layer, role)


def test_missing_gradient_of_one_layer_is_nan_for_that_layer_only():
    model = tiny_model()
    ids = Blocks(n=2).ids
    model(input_ids=ids, labels=ids).loss.backward()
    model.transformer.h[1].mlp.c_fc.weight.grad = None
    stats = block_statistics(model, grads=True)
    assert torch.isnan(stats[1, 4]).all()
    assert torch.isfinite(stats[[0, 2]]).all() and torch.isfinite(stats[1, [0, 1, 2, 3, 5]]).all()
    g = model.transformer.h[2].mlp.c_fc.weight.grad.double()
    assert stats[2, 4, 1].item() == pytest.approx(torch.var(g, unbiased=False).item(), rel=1e-12)


def test_no_host_sync_until_the_record_is_read_once(monkeypatch):
    # block_statistics stays on the device (no .item()/.tolist()/.cpu() per tensor); the record of
    # a step reads weights and gradients to the host in one .tolist()
    from hf_init.lm.recorders import variance_records

    model = tiny_model()
    ids = Blocks(n=2).ids
    model(input_ids=ids, labels=ids).loss.backward()
    reads = []
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__bool__"):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _name=name, _real=real, **k):
            reads.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    w, g = block_statistics(model), block_statistics(model, grads=True)
    assert reads == [], reads
    records = variance_records(5, w, g, roles=GPT2.block_roles)
    assert reads == ["tolist"], reads
    monkeypatch.undo()
    assert len(records) == N_LAYER * 6
    q = model.transformer.h[0].attn.c_attn.weight.grad[:, :D].double()
    assert records[0]["role"] == "q" and records[0]["grad_var"] == pytest.approx(
        torch.var(q, unbiased=False).item(), rel=1e-12
    )


class StepsSeen(StepRecorder):
    """A recorder that measures nothing but the steps it is asked for."""

    def __init__(self, every, sinks):
        super().__init__(sinks, every)
        self.updates = []

    def before_update(self, step, state, **kwargs):
        self.updates.append(step)

    def measure(self, step, state, **kwargs):
        return [make_record(step, None, None, {"loss": float(step)})]


class ListSink:
    def __init__(self):
        self.steps, self.closed = [], False

    def write(self, records):
        self.steps += [r["step"] for r in records]

    def flush(self):
        pass

    def close(self):
        self.closed = True


@pytest.mark.parametrize(
    "every, logging_steps, max_steps, resumed_at, expected",
    [
        (3, 100, 7, 0, [0, 3, 6, 7]),
        (3, 100, 9, 0, [0, 3, 6, 9]),
        (1, 100, 3, 0, [0, 1, 2, 3]),
        (5, 100, 3, 0, [0, 3]),
        (None, 2, 5, 0, [0, 2, 4, 5]),  # default: the logging interval
        (3, 100, 7, 4, [6, 7]),  # resumed from checkpoint-4: steps up to 4 are recorded already
        (3, 100, 7, 3, [6, 7]),  # resumed at a record step: not recorded twice
        (1, 100, 3, 1, [2, 3]),  # resumed from checkpoint-1: its step is recorded already
        (3, 100, 7, 7, []),  # resumed at the end: nothing left to record
    ],
)
def test_record_steps_of_the_protocol(every, logging_steps, max_steps, resumed_at, expected):
    # the Trainer's event order (Trainer._inner_training_loop): on_train_begin at the resumed
    # step, then per update on_pre_optimizer_step, global_step += 1, on_step_end
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    sink = ListSink()
    recorder = StepsSeen(every, [sink])
    args = SimpleNamespace(logging_steps=logging_steps)
    state = TrainerState(max_steps=max_steps, logging_steps=logging_steps, global_step=resumed_at)
    control = TrainerControl()
    recorder.on_train_begin(args, state, control)
    while state.global_step < max_steps:
        recorder.on_pre_optimizer_step(args, state, control)
        state.global_step += 1
        recorder.on_step_end(args, state, control)
    recorder.on_train_end(args, state, control)
    assert sink.steps == expected
    assert recorder.updates == [s for s in expected if s > 0]  # no update before step 0
    assert sink.closed


def test_not_the_main_process_measures_but_writes_nothing():
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    sink = ListSink()
    recorder = StepsSeen(2, [sink])
    state = TrainerState(max_steps=4, is_world_process_zero=False)
    args, control = SimpleNamespace(logging_steps=100), TrainerControl()
    recorder.on_train_begin(args, state, control)
    for _ in range(4):
        recorder.on_pre_optimizer_step(args, state, control)
        state.global_step += 1
        recorder.on_step_end(args, state, control)
    recorder.on_train_end(args, state, control)
    assert recorder.updates == [2, 4] and sink.steps == [] and not sink.closed


def run_with_recorders(out, probe_blocks, resume=None, report_to="tensorboard", probe_every=None):
    """A linear-warmup run of 7 steps, checkpoint at step 4, recorders of build_recorders every 3
    steps (the probe every ``probe_every``); ``resume``: from that checkpoint step. Returns the
    trainer and the records written."""
    from hf_init.core.records import iter_records

    data = Blocks()
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=7,
        per_device_train_batch_size=4,
        learning_rate=LR,
        warmup_steps=WARMUP,
        lr_scheduler_type="linear",
        logging_steps=100,
        save_strategy="steps",
        save_steps=4,
        report_to=report_to,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=data)
    eval_blocks = [{"input_ids": row} for row in data.ids[:4].tolist()]
    recorders = build_recorders(
        trainer,
        out,
        every=3,
        resumed_step=resume,
        eval_dataset=eval_blocks,
        probe_blocks=probe_blocks,
        probe_every=probe_every,
    )
    trainer.train(resume_from_checkpoint=str(out / f"checkpoint-{resume}") if resume else None)
    return trainer, recorders, list(iter_records(out / "variance.jsonl"))


LR, WARMUP = 1e-2, 4


def linear_warmup_lr(update):
    """The lr the HF linear schedule with warmup gives update ``update`` (1-based; 0: the first
    update's): that of scheduler step update - 1, by hand."""
    i = max(update - 1, 0)
    return LR * (i / WARMUP if i < WARMUP else max(0.0, (7 - i) / (7 - WARMUP)))


@pytest.mark.parametrize(
    "probe_blocks, probe_every, attn_steps",
    [(0, None, []), (2, None, [0, 3, 6, 7]), (2, 2, [0, 2, 4, 6, 7])],  # the probe's own steps
)
def test_learning_rate_is_recorded_with_or_without_the_probe(
    tmp_path, probe_blocks, probe_every, attn_steps
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, recorders, records = run_with_recorders(tmp_path, probe_blocks, probe_every=probe_every)
    names = [type(r).__name__ for r in recorders]
    probe = ["AttentionProbeCallback"] if probe_blocks else []
    assert names == ["QKVVarianceCallback", *probe, "LearningRateCallback", "SpikeMonitor"]
    lrs = {r["step"]: r["learning_rate"] for r in records if "learning_rate" in r}
    assert lrs == pytest.approx({s: linear_warmup_lr(s) for s in (0, 3, 6, 7)})
    assert sorted({r["step"] for r in records if r["role"] == "attn"}) == attn_steps
    assert sorted({r["step"] for r in records if r["role"] == "q"}) == [0, 3, 6, 7]
    # the learning rate in the Trainer's own TensorBoard stream, at the same steps
    (events,) = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {e.step: e.value for e in acc.Scalars("study/learning_rate")}
    assert scalars == pytest.approx({s: linear_warmup_lr(s) for s in (0, 3, 6, 7)}, rel=1e-6)


def test_a_resumed_run_records_only_the_steps_after_its_checkpoint(tmp_path):
    run_with_recorders(tmp_path, probe_blocks=0, report_to="none")
    (tmp_path / "variance.jsonl").unlink()  # what the resumed run writes, alone
    trainer, _, records = run_with_recorders(tmp_path, probe_blocks=0, resume=4, report_to="none")
    assert trainer.state.global_step == 7
    assert sorted({r["step"] for r in records}) == [6, 7]
    lrs = {r["step"]: r["learning_rate"] for r in records if "learning_rate" in r}
    assert lrs == pytest.approx({6: linear_warmup_lr(6), 7: linear_warmup_lr(7)})


@pytest.mark.parametrize("sharded", [False, True])
def test_only_sharded_weights_make_every_rank_compute(sharded):
    """Under FSDP2 (DTensor weights, which have ``full_tensor``) every rank must join the
    statistics' all-reduce; otherwise only the main process computes. The answer is taken from
    the model once and kept."""
    from types import SimpleNamespace

    model = tiny_model()
    if sharded:
        first = next(model.parameters())
        first.full_tensor = lambda: first  # what marks a DTensor here
    callback = QKVVarianceCallback()
    main, other = (SimpleNamespace(is_world_process_zero=z) for z in (True, False))
    assert callback._computes(main, model) is True
    assert callback._computes(other, model) is sharded
    assert callback._computes(other, None) is False  # no model, nothing to compute
    assert callback._computes(other, tiny_model()) is sharded  # kept from the first model


@pytest.mark.parametrize("process_index, resumed_step", [(0, 5), (1, 5), (0, None)])
def test_a_resumed_main_process_writes_on_in_the_latest_events_folder(
    tmp_path, process_index, resumed_step
):
    """The Trainer's TensorBoardCallback is taken and put back; resumed, the main process's
    writer goes to the newest events folder under runs/ with purge_step = resumed step + 1 (the
    points after the checkpoint hidden); other ranks and fresh runs keep the Trainer's own."""
    import os
    from types import SimpleNamespace

    from transformers.integrations import TensorBoardCallback

    from hf_init.lm.recorders import tensorboard_before_recorders

    for name, mtime in (("old", 1_000_000), ("new", 2_000_000)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        events = tmp_path / "runs" / name / f"events.out.tfevents.{mtime}.host"
        events.write_bytes(b"")
        os.utime(events, (mtime, mtime))

    class Trainer:
        args = SimpleNamespace(process_index=process_index)
        callbacks = [TensorBoardCallback()]

        def pop_callback(self, kind):
            found = next(c for c in self.callbacks if isinstance(c, kind))
            self.callbacks.remove(found)
            return found

        def add_callback(self, callback):
            self.callbacks.append(callback)

    trainer = Trainer()
    tensorboard = tensorboard_before_recorders(trainer, tmp_path, resumed_step)
    assert trainer.callbacks == [tensorboard]
    if process_index == 0 and resumed_step is not None:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        assert tensorboard.logging_dir == str(tmp_path / "runs" / "new")
        tensorboard.tb_writer.close()
        (written,) = [f for f in (tmp_path / "runs" / "new").iterdir() if f.stat().st_size]
        restarts = [  # the purge: a session start at purge_step, which hides later points
            e.step for e in EventFileLoader(str(written)).Load() if e.HasField("session_log")
        ]
        assert restarts == [resumed_step + 1]
    else:
        assert tensorboard.tb_writer is None  # the Trainer makes its own at train begin


def test_learning_rate_records_only_on_the_main_process_and_only_what_was_read():
    """measure: step 0 reads the optimizer now, step s the rate read before update s; nothing on a
    non-main rank, nothing for a step whose rate was never read (and each read is used once)."""
    from types import SimpleNamespace

    from hf_init.lm.recorders import LearningRateCallback

    opt = SimpleNamespace(param_groups=[{"lr": 3e-4}, {"lr": 1.0}])
    main, other = (SimpleNamespace(is_world_process_zero=z) for z in (True, False))
    cb = LearningRateCallback()
    assert cb.measure(0, main, optimizer=opt) == [
        make_record(0, None, None, {"learning_rate": 3e-4})
    ]
    assert cb.measure(0, other, optimizer=opt) == []
    cb.before_update(5, main, optimizer=SimpleNamespace(param_groups=[{"lr": 2e-4}]))
    assert cb.measure(5, other, optimizer=opt) == []  # the read is spent on the other rank too
    cb.before_update(6, main, optimizer=SimpleNamespace(param_groups=[{"lr": 1e-4}]))
    assert cb.measure(6, main, optimizer=opt) == [
        make_record(6, None, None, {"learning_rate": 1e-4})
    ]
    assert cb.measure(6, main, optimizer=opt) == []
    assert cb.measure(7, main, optimizer=opt) == []  # never read
