"""The spike monitor: z-scores, flags and counts of synthetic series against numpy by hand; on real
tiny runs, the loss and gradient norm it reads against the Trainer's log and a hand-computed
norm, a spike forced by scaling the loss at one step, a skipped update that leaves weights and
AdamW state bit-identical, and a resumed run that equals the uninterrupted one."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import free_port
from test_recorders import Blocks, tiny_model
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_init.lm.recorders import build_recorders
from hf_init.lm.spikes import STATE_KEY, SpikeDetector, SpikeMonitor

# --- synthetic series ---------------------------------------------------------------------------


def hand_zscores(values, window):
    """z of each value over the last `window` finite values before it (numpy, population std)."""
    z, seen = [], []
    for v in values:
        if len(seen) >= window and math.isfinite(v):
            last = np.array(seen[-window:])
            z.append((v - last.mean()) / last.std() if last.std() > 0 else None)
        else:
            z.append(None)
        if math.isfinite(v):
            seen.append(v)
    return z


def series(n=40, seed=0):
    rng = np.random.default_rng(seed)
    loss = list(3.0 - 0.01 * np.arange(n) + 0.02 * rng.standard_normal(n))
    norm = list(1.0 + 0.05 * rng.standard_normal(n))
    loss[25] += 1.0  # a loss spike (about 50 sigma)
    norm[30] *= 20.0  # a gradient-norm spike
    norm[12] = float("nan")  # a non-finite value: no z, kept out of the window
    return loss, norm


def run_detector(detector, loss, norm, first_step=1):
    return [detector.update(first_step + i, a, b) for i, (a, b) in enumerate(zip(loss, norm))]


def test_zscores_flags_and_counts_equal_a_hand_computation():
    window, threshold = 8, 6.0
    loss, norm = series()
    outcomes = run_detector(SpikeDetector(window, threshold), loss, norm)
    for name, values in (("loss", loss), ("grad_norm", norm)):
        expected = hand_zscores(values, window)
        got = [getattr(o, f"{name}_zscore") for o in outcomes]
        assert [e is None for e in expected] == [g is None for g in got], name
        np.testing.assert_allclose(
            [g for g in got if g is not None], [e for e in expected if e is not None], rtol=1e-9
        )
        flagged = [o.step for o in outcomes if getattr(o, f"{name}_spike")]
        assert flagged == [i + 1 for i, e in enumerate(expected) if e is not None and e > threshold]
    assert [o.step for o in outcomes if o.loss_spike] == [26]
    assert [o.step for o in outcomes if o.grad_norm_spike] == [31]
    # the window is full from the 9th value on (the grad norm's NaN delays its own window by one)
    last = outcomes[-1]
    assert (last.steps_monitored, last.spike_count) == (len(loss) - window, 2)
    assert SpikeDetector(window, threshold).summary()["score"] is None  # nothing monitored yet
    detector = SpikeDetector(window, threshold)
    run_detector(detector, loss, norm)
    assert detector.summary()["score"] == pytest.approx(2 / (len(loss) - window))


def test_a_spike_enters_the_window_so_an_equal_value_next_is_not_one():
    flat = [1.0, 1.1] * 4
    outcomes = run_detector(SpikeDetector(8, 6.0), [*flat, 5.0, 5.0], [1.0] * 10)
    assert [o.loss_spike for o in outcomes[-2:]] == [True, False]
    # the second 5.0 by hand: the window holds 1.1, 1.0, 1.1, 1.0, 1.1, 1.0, 1.1 and the first 5.0
    w = np.array([*flat[1:], 5.0])
    assert outcomes[-1].loss_zscore == pytest.approx((5.0 - w.mean()) / w.std())


def test_a_constant_window_gives_no_zscore():
    outcomes = run_detector(SpikeDetector(4, 6.0), [2.0] * 6, [1.0] * 6)
    assert all(o.loss_zscore is None and not o.spike for o in outcomes)


def test_state_round_trips_through_json_and_continues_exactly():
    loss, norm = series()
    whole = run_detector(SpikeDetector(8, 6.0), loss, norm)
    first = SpikeDetector(8, 6.0)
    run_detector(first, loss[:20], norm[:20])
    second = SpikeDetector(8, 6.0)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    rest = run_detector(second, loss[20:], norm[20:], first_step=21)
    assert rest == whole[20:]


def test_the_summary_line_says_what_run_info_holds():
    from hf_init.lm.run_info import describe_spikes

    detector = SpikeDetector(8, 6.0)
    loss, norm = series()
    outcome = run_detector(detector, loss, norm)[30]  # step 31: the gradient-norm spike
    detector.mark_skipped(outcome)
    line = describe_spikes({**detector.summary(), "skip_spike_updates": True})
    assert line == (
        "spikes: 2 in 32 monitored steps (score 0.0625; z > 6 against the previous 8 steps): "
        "loss 1, gradient norm 1, at steps 26, 31; skipped updates: 1 (--skip_spike_updates)"
    )
    # the first ten spike steps are listed; an eleventh is only hinted at
    many = {**detector.summary(), "skip_spike_updates": False, "loss_spikes": 11,
            "grad_norm_spikes": 0, "count": 11, "spike_steps": list(range(20, 31))}  # fmt: skip
    assert describe_spikes(many).endswith(f"at steps {', '.join(map(str, range(20, 30)))}, ...")
    ten = {**many, "count": 10, "loss_spikes": 10, "spike_steps": list(range(20, 30))}
    assert describe_spikes(ten).endswith(f"at steps {', '.join(map(str, range(20, 30)))}")
    empty = describe_spikes({**SpikeDetector(128, 6.0).summary(), "skip_spike_updates": False})
    assert empty == (
        "spikes: none monitored (z > 6 against the previous 128 steps: no step had that many "
        "before it)"
    )


@pytest.mark.parametrize("window, threshold", [(1, 6.0), (8, 0.0), (8, float("nan"))])
def test_bad_window_or_threshold_is_refused(window, threshold):
    with pytest.raises(ValueError, match="spike"):
        SpikeDetector(window, threshold)


def test_values_are_read_to_the_host_once_per_record_step(monkeypatch):
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    values = SimpleNamespace(step_values=None)
    sink = []
    monitor = SpikeMonitor(values, [SimpleNamespace(write=sink.extend)], 5, window=2, threshold=6)
    state, control = TrainerState(max_steps=10), TrainerControl()
    monitor.on_train_begin(None, state, control)
    reads = []
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__bool__"):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _name=name, _real=real, **k):
            reads.append((state.global_step, _name))
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    for step in range(1, 6):
        values.step_values = torch.tensor([3.0 - 0.1 * step, 1.0 + 0.01 * step])
        state.global_step = step
        monitor.on_step_end(None, state, control)
    assert reads == [(5, "tolist")]  # steps 1-4 kept on the device, step 5 reads all five
    monkeypatch.undo()
    assert [r["step"] for r in sink] == [5]
    assert sink[0]["loss"] == pytest.approx(2.5) and sink[0]["grad_norm"] == pytest.approx(1.05)
    z = (1.05 - np.mean([1.03, 1.04])) / np.std([1.03, 1.04])
    assert sink[0]["grad_norm_zscore"] == pytest.approx(z, rel=1e-5)


# --- real tiny runs -------------------------------------------------------------------------------


class ScaleLossAt(TrainerCallback):
    """Test-only: multiplies the model's loss by ``factor`` in the forward passes of update
    ``step`` (a forward hook), so that update's loss and gradient norm jump."""

    def __init__(self, step, factor):
        self.step, self.factor, self.active = step, factor, False

    def on_train_begin(self, args, state, control, model=None, **kw):
        def hook(module, inputs, output):
            if self.active:
                output["loss"] = output["loss"] * self.factor

        model.register_forward_hook(hook)

    def on_step_begin(self, args, state, control, **kw):
        self.active = state.global_step + 1 == self.step


class HandGradNorm(TrainerCallback):
    """The global gradient norm of each update, by hand, before the optimizer step (no clipping
    in these runs, so it is the norm the monitor should read)."""

    def __init__(self):
        self.norms = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        grads = [p.grad.double().flatten() for p in model.parameters() if p.grad is not None]
        self.norms[state.global_step + 1] = float(torch.linalg.vector_norm(torch.cat(grads)))


class Snapshot(TrainerCallback):
    """Copies of the weights and the AdamW state before and after update ``step``."""

    def __init__(self, step):
        self.step, self.before, self.after = step, None, None

    def _copy(self, model, optimizer):
        inner = optimizer.optimizer
        state = {
            (i, k): v.clone()
            for i, p in enumerate(model.parameters())
            for k, v in inner.state.get(p, {}).items()
        }
        return {n: p.detach().clone() for n, p in model.named_parameters()}, state

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kw):
        if state.global_step + 1 in (self.step, self.step + 1):
            self.before = self.before or {}
            self.before[state.global_step + 1] = self._copy(model, optimizer)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        if state.global_step in (self.step, self.step + 1):
            self.after = self.after or {}
            self.after[state.global_step] = self._copy(model, optimizer)


def spike_run(
    out,
    spikes,
    max_steps=12,
    spike_at=9,
    factor=1e3,
    save_steps=None,
    resume=None,
    report_to="none",
):
    """A tiny AdamW run (weight decay, no clipping) with the recorders of build_recorders every 3
    steps, the loss scaled at ``spike_at``; logging every step. Returns the trainer, the monitor,
    the stability records and the test callbacks."""
    from hf_init.core.records import iter_records

    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        weight_decay=0.1,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to=report_to,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    hand, snap = HandGradNorm(), Snapshot(spike_at)
    trainer = Trainer(
        model=tiny_model(),
        args=args,
        train_dataset=Blocks(n=64),
        callbacks=[ScaleLossAt(spike_at, factor), hand, snap],
    )
    recorders = build_recorders(trainer, out, every=3, resumed_step=resume, spikes=spikes)
    (monitor,) = [r for r in recorders if isinstance(r, SpikeMonitor)]
    trainer.train(resume_from_checkpoint=str(out / f"checkpoint-{resume}") if resume else None)
    records = [r for r in iter_records(out / "variance.jsonl") if r["role"] == "stability"]
    return trainer, monitor, records, hand, snap


def logged(trainer, name):
    return {h["step"]: h[name] for h in trainer.state.log_history if name in h}


def test_monitor_reads_the_trainers_loss_and_norm_and_flags_the_forced_spike(tmp_path):
    trainer, monitor, records, hand, _ = spike_run(
        tmp_path, {"window": 4, "threshold": 6.0}, report_to="tensorboard"
    )
    loss, norm = logged(trainer, "loss"), logged(trainer, "grad_norm")
    steps = sorted(loss)
    assert steps == list(range(1, 13))
    # the norm the Trainer logs and the monitor reads is the hand-computed global norm
    np.testing.assert_allclose([norm[s] for s in steps], [hand.norms[s] for s in steps], rtol=1e-5)
    z_loss = dict(zip(steps, hand_zscores([loss[s] for s in steps], 4)))
    z_norm = dict(zip(steps, hand_zscores([norm[s] for s in steps], 4)))
    assert z_loss[9] > 6 and z_norm[9] > 6  # the forced spike, by hand
    by_step = {r["step"]: r for r in records}
    spikes = [s for s in steps if (z_loss[s] or 0) > 6 or (z_norm[s] or 0) > 6]
    assert sorted(by_step) == sorted({3, 6, 9, 12, *spikes})  # record steps and spike steps
    for s, r in by_step.items():
        assert r["loss"] == pytest.approx(loss[s], rel=1e-6)
        assert r["grad_norm"] == pytest.approx(norm[s], rel=1e-6)
        for name, z in (("loss_zscore", z_loss[s]), ("grad_norm_zscore", z_norm[s])):
            assert r[name] == (None if z is None else pytest.approx(z, rel=1e-4)), (s, name)
        assert r["update_skipped"] == 0
    assert by_step[9]["loss_spike"] == 1 and by_step[9]["grad_norm_spike"] == 1
    summary = monitor.summary()
    assert summary["spike_steps"] == spikes and summary["count"] == len(spikes)
    assert summary["steps_monitored"] == 12 - 4
    assert summary["score"] == pytest.approx(len(spikes) / 8)
    assert by_step[12]["spike_count"] == len(spikes)
    # TensorBoard: the same z-scores, as scalars of the Trainer's own events file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {e.step: e.value for e in acc.Scalars("stability/grad_norm_zscore")}
    expected = {s: z_norm[s] for s in by_step if z_norm[s] is not None}
    assert scalars == pytest.approx(expected, rel=1e-4)
    assert {e.step: e.value for e in acc.Scalars("stability/spike_count")} == {
        s: r["spike_count"] for s, r in by_step.items()
    }


def same_tensors(a, b):
    weights_a, state_a = a
    weights_b, state_b = b
    return (
        weights_a.keys() == weights_b.keys()
        and state_a.keys() == state_b.keys()
        and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
        and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    )


def test_skipped_update_leaves_weights_and_adamw_state_bit_identical(tmp_path):
    spikes = {"window": 4, "threshold": 6.0, "skip_updates": True}
    trainer, monitor, records, hand, snap = spike_run(tmp_path, spikes)
    z_norm = hand_zscores([hand.norms[s] for s in range(1, 13)], 4)
    flagged = [s for s, z in zip(range(1, 13), z_norm) if z is not None and z > 6]
    assert 9 in flagged
    assert monitor.summary()["skipped_steps"] == flagged  # exactly the gradient-norm spikes
    assert same_tensors(snap.before[9], snap.after[9])  # the skipped update changed nothing
    assert not same_tensors(snap.before[10], snap.after[10])  # an applied one changes both
    by_step = {r["step"]: r for r in records}
    assert by_step[9]["update_skipped"] == 1 and by_step[12]["skipped_updates"] == len(flagged)
    # the schedule and the step count go on: 12 steps, AdamW's own count one short per skip
    assert trainer.state.global_step == 12
    inner = trainer.optimizer.optimizer
    counts = {float(s["step"]) for s in inner.state.values()}
    assert counts == {12.0 - len(flagged)}


def test_a_resumed_run_has_the_same_spikes_as_the_uninterrupted_one(tmp_path):
    spikes = {"window": 4, "threshold": 6.0, "skip_updates": True}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _, mon_a, rec_a, _, _ = spike_run(straight, spikes, save_steps=5)
    spike_run(resumed, spikes, save_steps=5, max_steps=12)
    # keep the records and checkpoint of step 5, as a run stopped after it would have left them
    import shutil

    shutil.rmtree(resumed / "checkpoint-10")
    lines = (resumed / "variance.jsonl").read_text().splitlines(keepends=True)
    (resumed / "variance.jsonl").write_text(
        "".join(line for line in lines if json.loads(line)["step"] <= 5)
    )
    saved = json.loads((resumed / "checkpoint-5" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"][STATE_KEY]["steps_monitored"] == 5 - 4
    _, mon_b, rec_b, _, _ = spike_run(resumed, spikes, save_steps=5, resume=5)
    assert rec_b == rec_a
    assert mon_b.summary() == mon_a.summary() and 9 in mon_a.summary()["skipped_steps"]


# --- two ranks: every rank skips the same updates ------------------------------------------------

# scripts/pretrain.py with the loss scaled on rank 1 only at update SPIKE_AT, and each rank writing
# the steps it skipped and a digest of its weights at the end of training
RANKS_WRAPPER = """
import hashlib, json, os, runpy, sys
from transformers import Trainer, TrainerCallback

class ScaleOnRank1(TrainerCallback):
    active = False
    def on_train_begin(self, args, state, control, model=None, **kw):
        def hook(module, inputs, output):
            if self.active:
                output["loss"] = output["loss"] * 1e3
        model.register_forward_hook(hook)
    def on_step_begin(self, args, state, control, **kw):
        self.active = args.process_index == 1 and state.global_step + 1 == {spike_at}

class Report(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer
    def on_train_end(self, args, state, control, model=None, **kw):
        (monitor,) = [c for c in self.trainer.callback_handler.callbacks
                      if type(c).__name__ == "SpikeMonitor"]
        digest = hashlib.sha256()
        for p in model.parameters():
            digest.update(p.detach().cpu().numpy().tobytes())
        path = os.path.join(args.output_dir, f"rank{{args.process_index}}.json")
        with open(path, "w") as f:
            json.dump({{"skipped": monitor.detector.skipped_steps,
                       "weights": digest.hexdigest()}}, f)

init = Trainer.__init__
def patched(self, *a, **k):
    init(self, *a, **k)
    self.add_callback(ScaleOnRank1())
    self.add_callback(Report(self))
Trainer.__init__ = patched
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def test_two_ranks_skip_the_same_updates_when_one_ranks_loss_spikes(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from test_run_lifecycle import ENV, ROOT, TINY

    script = tmp_path / "wrapper.py"
    pretrain = str(Path(ROOT) / "scripts" / "pretrain.py")
    script.write_text(RANKS_WRAPPER.format(spike_at=9, script=pretrain))
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(Path(ROOT) / "accelerate_configs" / "cpu_ddp.yaml"),
        "--main_process_port",
        str(free_port()),
        str(script),
        *TINY,
        "--max_steps",
        "12",
        "--spike_window",
        "4",
        "--skip_spike_updates",
        "true",
        "--output_dir",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert 9 in ranks[0]["skipped"]  # rank 1's loss alone made the (all-reduced) norm a spike
    assert ranks[0] == ranks[1]  # same skipped steps, bit-identical weights on both ranks
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert info["spikes"]["skipped_steps"] == ranks[0]["skipped"]


def test_stability_record_carries_the_spike_score_and_flags_as_numbers():
    """One step's record: its values, z-scores, the flags as 0/1 and the run's counts, with the
    spike score = spikes / steps monitored (3 / 12), None before any step was monitored."""
    from hf_init.lm.spikes import StepOutcome, stability_record

    outcome = StepOutcome(7, 2.5, 0.8, 4.1, None, True, False, 3, 12, 1, update_skipped=True)
    values = {k: v for k, v in stability_record(outcome).items() if k not in ("layer", "role")}
    assert values == {
        "step": 7,
        "loss": 2.5,
        "grad_norm": 0.8,
        "loss_zscore": 4.1,
        "grad_norm_zscore": None,
        "loss_spike": 1,
        "grad_norm_spike": 0,
        "update_skipped": 1,
        "spike_count": 3,
        "spike_score": 0.25,
        "skipped_updates": 1,
    }
    first = StepOutcome(0, 2.5, 0.8, None, None, False, False, 0, 0, 0)
    assert stability_record(first)["spike_score"] is None


def test_step_values_sum_a_steps_micro_batch_losses_and_take_its_norm():
    """Wrapped on a stand-in Trainer: the loss of an optimizer step is the sum of what its
    micro-batches' training_step returned (this rank's share of the step's mean), the norm is
    what _get_grad_norm returned, tagged with the global step; the next step starts afresh, and
    a step with no micro-batch loss reads NaN."""
    from types import SimpleNamespace

    from hf_init.lm.spikes import StepValues

    trainer = SimpleNamespace(state=SimpleNamespace(global_step=7))
    losses = iter([torch.tensor(0.25), torch.tensor(0.5), torch.tensor(2.0)])
    trainer.training_step = lambda *a, **k: next(losses)
    trainer._get_grad_norm = lambda *a, **k: torch.tensor(1.5)
    values = StepValues(trainer)
    trainer.training_step(), trainer.training_step()
    trainer._get_grad_norm()
    assert values.step_values.tolist() == [0.75, 1.5]
    assert values.grad_norm[0] == 7 and float(values.grad_norm[1]) == 1.5
    trainer.state.global_step = 8
    trainer.training_step()
    trainer._get_grad_norm()
    assert values.step_values.tolist() == [2.0, 1.5] and values.grad_norm[0] == 8
    trainer._get_grad_norm()
    assert math.isnan(values.step_values[0]) and values.step_values[1] == 1.5
