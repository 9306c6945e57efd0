"""Loss and gradient-norm spikes: a rolling z-score monitor, and skipping the update of a spike.

A step's value is a **spike** when it exceeds the mean of the last ``window`` values before it by
more than ``threshold`` standard deviations (population std of those values): OLMo-core's
stability monitor, whose defaults ``scripts/pretrain.py`` keeps (``--spike_window 128
--spike_threshold 6``). 128 values: enough for the std to be known to about 6% (1 / sqrt(2 x 127))
while still following the trend of a loss that falls over hundreds of steps. 6: for Gaussian
step-to-step noise, judged against 128 earlier values, a z-score above 6 happens about once in
10^8 steps (Student's t with 127 degrees of freedom), so a flagged step is not noise, while the
spikes that precede divergence are tens of sigmas. Nothing is flagged before the window is full;
a spike's value enters the window like any other (as in OLMo-core).

* :class:`SpikeDetector`: the z-scores, flags and counts of a series of steps (pure Python, its
  state a JSON dict).
* :class:`StepValues`: the loss and the gradient norm of each optimizer step as the Trainer
  computes them (the value its ``training_step`` returns, summed over the accumulated
  micro-batches; the pre-clipping norm of ``_get_grad_norm``), kept on the device.
* :class:`SpikeMonitor`: the recorder. Its records (role ``stability``) go to the run's record
  file at the record steps and at every spike step; with ``skip_updates`` the optimizer step of a
  gradient-norm spike is not taken (weights and optimizer state untouched).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass

import torch

from hf_init.core.records import make_record
from hf_init.lm.recorders import StepRecorder

ROLE = "stability"  # the role of the monitor's records
# where the monitor's state is kept in TrainerState.stateful_callbacks (trainer_state.json of every
# checkpoint): not a callback class name, so the Trainer's own callback restore leaves it alone
STATE_KEY = "hf_init.SpikeMonitor"


def rolling_zscore(value: float, history, window: int) -> float | None:
    """``(value - mean) / std`` of the last ``window`` values of ``history`` (population std);
    None while fewer than ``window`` values are known, when their std is 0 or ``value`` is not
    finite."""
    if len(history) < window or not math.isfinite(value):
        return None
    last = list(history)[-window:]
    mean = math.fsum(last) / window
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in last) / window)
    return (value - mean) / std if std > 0 else None


@dataclass
class StepOutcome:
    """What the detector says about one optimizer step."""

    step: int
    loss: float
    grad_norm: float
    loss_zscore: float | None
    grad_norm_zscore: float | None
    loss_spike: bool
    grad_norm_spike: bool
    spike_count: int  # the run's counts up to and including this step
    steps_monitored: int
    skipped_updates: int
    update_skipped: bool = False

    @property
    def spike(self) -> bool:
        return self.loss_spike or self.grad_norm_spike


class SpikeDetector:
    """Rolling z-scores of the loss and the gradient norm, one step at a time (:meth:`update`, in
    step order), and the counts a run reports. Non-finite values get no z-score and stay out of
    the windows."""

    def __init__(self, window: int, threshold: float):
        if window < 2:
            raise ValueError(f"spike window must be >= 2 values, got {window}")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"spike threshold must be a finite number > 0, got {threshold}")
        self.window = window
        self.threshold = threshold
        self.history = {"loss": deque(maxlen=window), "grad_norm": deque(maxlen=window)}
        self.steps_monitored = 0  # steps with a z-score (a full window)
        self.spike_steps: list[int] = []  # loss or gradient-norm spikes
        self.loss_spikes = 0
        self.grad_norm_spikes = 0
        self.skipped_steps: list[int] = []

    def update(self, step: int, loss: float, grad_norm: float) -> StepOutcome:
        loss, grad_norm = float(loss), float(grad_norm)
        z = {}
        for name, value in (("loss", loss), ("grad_norm", grad_norm)):
            z[name] = rolling_zscore(value, self.history[name], self.window)
            if math.isfinite(value):
                self.history[name].append(value)
        flags = {name: bool(z[name] is not None and z[name] > self.threshold) for name in z}
        if z["loss"] is not None or z["grad_norm"] is not None:
            self.steps_monitored += 1
        self.loss_spikes += flags["loss"]
        self.grad_norm_spikes += flags["grad_norm"]
        if flags["loss"] or flags["grad_norm"]:
            self.spike_steps.append(step)
        return StepOutcome(
            step,
            loss,
            grad_norm,
            z["loss"],
            z["grad_norm"],
            flags["loss"],
            flags["grad_norm"],
            spike_count=self.spike_count,
            steps_monitored=self.steps_monitored,
            skipped_updates=len(self.skipped_steps),
        )

    def mark_skipped(self, outcome: StepOutcome) -> None:
        """``outcome``'s update was not applied."""
        outcome.update_skipped = True
        outcome.skipped_updates += 1
        self.skipped_steps.append(outcome.step)

    @property
    def spike_count(self) -> int:
        return len(self.spike_steps)

    @property
    def spike_score(self) -> float | None:
        """The fraction of monitored steps that were spikes (OLMo-core's cumulative spike score);
        None before any step was monitored."""
        return self.spike_count / self.steps_monitored if self.steps_monitored else None

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly (JSON: floats round-trip exactly)."""
        return {
            "window": self.window,
            "threshold": self.threshold,
            "loss": list(self.history["loss"]),
            "grad_norm": list(self.history["grad_norm"]),
            "steps_monitored": self.steps_monitored,
            "spike_steps": list(self.spike_steps),
            "loss_spikes": self.loss_spikes,
            "grad_norm_spikes": self.grad_norm_spikes,
            "skipped_steps": list(self.skipped_steps),
        }

    def load_state_dict(self, state: dict) -> None:
        """The state of :meth:`state_dict`; this detector's window and threshold are kept (a
        smaller window keeps the latest values)."""
        for name in self.history:
            self.history[name] = deque(state[name], maxlen=self.window)
        self.steps_monitored = state["steps_monitored"]
        self.spike_steps = list(state["spike_steps"])
        self.loss_spikes = state["loss_spikes"]
        self.grad_norm_spikes = state["grad_norm_spikes"]
        self.skipped_steps = list(state["skipped_steps"])

    def summary(self) -> dict:
        """The run's spikes as ``run_info.json`` has them."""
        return {
            "window": self.window,
            "threshold": self.threshold,
            "steps_monitored": self.steps_monitored,
            "count": self.spike_count,
            "score": self.spike_score,
            "loss_spikes": self.loss_spikes,
            "grad_norm_spikes": self.grad_norm_spikes,
            "spike_steps": list(self.spike_steps),
            "skipped_updates": len(self.skipped_steps),
            "skipped_steps": list(self.skipped_steps),
        }


def stability_record(outcome: StepOutcome) -> dict:
    """The record of one step (role ``stability``, no layer): its values, z-scores and flags, and
    the run's counts up to it."""
    score = outcome.spike_count / outcome.steps_monitored if outcome.steps_monitored else None
    return make_record(
        outcome.step,
        None,
        ROLE,
        {
            "loss": outcome.loss,
            "grad_norm": outcome.grad_norm,
            "loss_zscore": outcome.loss_zscore,
            "grad_norm_zscore": outcome.grad_norm_zscore,
            "loss_spike": int(outcome.loss_spike),
            "grad_norm_spike": int(outcome.grad_norm_spike),
            "update_skipped": int(outcome.update_skipped),
            "spike_count": outcome.spike_count,
            "spike_score": score,
            "skipped_updates": outcome.skipped_updates,
        },
    )


class StepValues:
    """The loss and the gradient norm of the Trainer's optimizer steps, taken from the Trainer's
    own computation (no extra pass, no host sync): the sum of what ``training_step`` returns over
    a step's micro-batches (this rank's share of the step's mean loss, what the Trainer logs) and
    the global gradient norm before clipping that ``_get_grad_norm`` returns once per optimizer
    step (after the gradients are all-reduced, so every rank has the same). Installed on the
    Trainer instance by wrapping those two methods. ``grad_norm``: (the Trainer's
    ``global_step`` when it was taken, the norm as the Trainer returned it), what
    :class:`~hf_init.lm.guards.DivergenceStop` reads."""

    def __init__(self, trainer):
        if not hasattr(trainer, "_get_grad_norm"):
            raise RuntimeError(
                "this transformers version's Trainer has no _get_grad_norm: the spike monitor "
                "cannot read the gradient norm"
            )
        self._loss = None
        self.step_values: torch.Tensor | None = None  # (loss, grad_norm) of the last step
        self.grad_norm: tuple[int, object] | None = None
        training_step, grad_norm = trainer.training_step, trainer._get_grad_norm

        @functools.wraps(training_step)
        def tapped_training_step(*args, **kwargs):
            loss = training_step(*args, **kwargs)
            self._loss = loss if self._loss is None else self._loss + loss
            return loss

        @functools.wraps(grad_norm)
        def tapped_grad_norm(*args, **kwargs):
            norm = grad_norm(*args, **kwargs)
            self.grad_norm = (trainer.state.global_step, norm)
            self._close_step(norm)
            return norm

        trainer.training_step = tapped_training_step
        trainer._get_grad_norm = tapped_grad_norm

    def _close_step(self, norm) -> None:
        loss = self._loss if self._loss is not None else torch.tensor(float("nan"))
        self._loss = None
        if hasattr(norm, "full_tensor"):  # a DTensor norm of sharded gradients
            norm = norm.full_tensor()
        norm = torch.as_tensor(float("nan") if norm is None else norm, device=loss.device)
        self.step_values = torch.stack([loss.detach().float().reshape(()), norm.float()])


def world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SpikeMonitor(StepRecorder):
    """Rolling z-scores of each optimizer step's loss and gradient norm (:class:`SpikeDetector`),
    recorded at the record steps and at every spike step (:func:`stability_record`).

    The step values stay on the device and are read in one transfer when records are due (record,
    save and evaluation steps, the end of training), so monitoring adds no host sync per step. The
    loss is averaged over the ranks and the gradient norm taken from rank 0 in that one gather, so
    every rank's detector holds the same numbers. ``skip_updates``: before each optimizer step
    (one host sync, and one all-gather across ranks, per step) a gradient-norm spike makes the
    optimizer's ``step`` return without touching weights or optimizer state, on every rank; the
    batch is still consumed and the learning-rate schedule still advances, as in OLMo-core and
    llm.c. The detector's state goes
    into every checkpoint's ``trainer_state.json`` (:data:`STATE_KEY`) and a resumed run
    continues from it."""

    what = "spike monitoring"

    def __init__(
        self,
        values: StepValues,
        sinks=(),
        every: int | None = None,
        *,
        window: int,
        threshold: float,
        skip_updates: bool = False,
    ):
        super().__init__(sinks, every)
        self.values = values
        self.detector = SpikeDetector(window, threshold)
        self.skip_updates = skip_updates
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, (loss, grad_norm)) on device
        self._outcomes: list[StepOutcome] = []  # read, not yet recorded
        self._state = None

    # --- the steps' values: taken on the device, read in one transfer ------------------------

    def _take(self, step: int) -> None:
        """Keep the values of the update that completed ``step`` (once per step)."""
        if self.values.step_values is None or (self._pending and self._pending[-1][0] >= step):
            return
        if self._outcomes and self._outcomes[-1].step >= step:
            return
        self._pending.append((step, self.values.step_values))

    def _read(self) -> None:
        """Every pending step through the detector (a collective when distributed: every rank
        calls it at the same steps)."""
        if not self._pending:
            return
        steps = [s for s, _ in self._pending]
        values = torch.stack([v for _, v in self._pending])  # (n, 2)
        self._pending = []
        n_ranks = world_size()
        if n_ranks > 1:
            gathered = [torch.empty_like(values) for _ in range(n_ranks)]
            torch.distributed.all_gather(gathered, values)
            rows = [g.tolist() for g in gathered]
            losses = [math.fsum(r[i][0] for r in rows) / n_ranks for i in range(len(steps))]
            norms = [v[1] for v in rows[0]]
        else:
            losses, norms = zip(*values.tolist()) if steps else ((), ())
        for step, loss, norm in zip(steps, losses, norms):
            self._outcomes.append(self.detector.update(step, loss, norm))

    # --- the recorder protocol ----------------------------------------------------------------

    def measure(self, step, state, **kwargs):
        outcomes, self._outcomes = self._outcomes, []
        if not state.is_world_process_zero:
            return []
        return [
            stability_record(o)
            for o in outcomes
            if o.spike or o.update_skipped or self.should_record(o.step, state)
        ]

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self._state = state
        saved = (state.stateful_callbacks or {}).get(STATE_KEY)
        if state.global_step > 0 and saved:
            self.detector.load_state_dict(saved)
        if self.skip_updates:
            self._wrap_step(optimizer)
        super().on_train_begin(args, state, control, optimizer=optimizer, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        self._take(step)
        if self.should_record(step, state) or control.should_save or control.should_evaluate:
            self._read()
            state.stateful_callbacks[STATE_KEY] = self.detector.state_dict()
            self._write(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._read()
        self._write(state)
        super().on_train_end(args, state, control, **kwargs)

    def flush(self) -> None:
        """Records of the steps read so far, and (one process only: no collective after a
        failure) of the pending ones, on disk."""
        if self._state is not None:
            if world_size() == 1:
                self._read()
            self._write(self._state)
        super().flush()

    def _write(self, state) -> None:
        """The records of the steps read and not yet recorded to every sink (main process)."""
        records = self.measure(state.global_step, state)
        if records and state.is_world_process_zero:
            for sink in self.sinks:
                sink.write(records)

    def summary(self) -> dict:
        """``run_info.json``'s ``spikes``: :meth:`SpikeDetector.summary` and whether updates of
        spikes were skipped."""
        return {**self.detector.summary(), "skip_spike_updates": self.skip_updates}

    # --- skipping the update of a gradient-norm spike ---------------------------------------

    def _wrap_step(self, optimizer) -> None:
        """Wrap the innermost torch optimizer's ``step`` (under accelerate's wrapper and the LR
        scheduler's step counter, which ``functools.wraps`` keeps marked)."""
        inner = optimizer
        while hasattr(inner, "optimizer"):
            inner = inner.optimizer
        if getattr(inner.step, "_skips_spikes", False):
            return
        original = inner.step

        @functools.wraps(original)
        def step(*args, **kwargs):
            update = self._state.global_step + 1  # the step this update completes
            self._take(update)
            self._read()
            outcome = self._outcomes[-1] if self._outcomes else None
            if outcome is not None and outcome.step == update and outcome.grad_norm_spike:
                self.detector.mark_skipped(outcome)
                return None
            return original(*args, **kwargs)

        step._skips_spikes = True
        inner.step = step


def spike_summary(recorders) -> dict | None:
    """The :meth:`SpikeMonitor.summary` of the run's monitor among ``recorders`` (None if none)."""
    monitor = next((r for r in recorders if isinstance(r, SpikeMonitor)), None)
    return monitor.summary() if monitor is not None else None
