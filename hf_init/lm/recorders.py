"""Recorders: Trainer callbacks that measure at the record steps and hand records to sinks.

:class:`StepRecorder` is the one protocol (OLMo-core's: a monitor measures and hands numbers on,
sinks own the writers): it decides when (step 0, every ``every`` optimizer steps, the last step,
each once, and not again on resume) and gives what a recorder measures to its sinks
(:mod:`hf_init.lm.sinks`). The recorders: :class:`QKVVarianceCallback` (block weights and
gradients), :class:`LearningRateCallback`,
:class:`~hf_init.lm.attention_probe.AttentionProbeCallback` and
:class:`~hf_init.lm.spikes.SpikeMonitor`; :func:`build_recorders` makes those a run uses.
"""

from __future__ import annotations

import math
from operator import attrgetter
from pathlib import Path

import torch
from transformers import TrainerCallback

from hf_init.core.cli import RunStopped
from hf_init.core.moments import sharded_block_moments
from hf_init.core.records import make_record
from hf_init.lm.families import Family, family_of
from hf_init.lm.guards import stop_on_every_rank
from hf_init.lm.run_folder import VARIANCE_FILE, latest_events_dir
from hf_init.lm.sinks import (
    AttentionTensorBoardSink,
    JsonlSink,
    NonFiniteRecords,
    TensorBoardSink,
    WholeModelTensorBoardSink,
)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP/FSDP (``.module``) and ``torch.compile`` (``._orig_mod``)
    wrappers."""
    while True:
        for attr in ("module", "_orig_mod"):
            inner = getattr(model, attr, None)
            if isinstance(inner, torch.nn.Module):
                model = inner
                break
        else:
            return model


def model_blocks(model: torch.nn.Module) -> tuple[Family, torch.nn.ModuleList]:
    """The family (:mod:`hf_init.lm.families`) of a causal LM or body, wrapped or not, and its list
    of transformer blocks; ValueError when the model has none of that family."""
    bare = unwrap_model(model)
    family = family_of(getattr(bare, "config", None))
    return family, family.blocks(bare)


def _is_sharded(model: torch.nn.Module) -> bool:
    return any(hasattr(p, "full_tensor") for p in unwrap_model(model).parameters())


@torch.no_grad()
def block_statistics(model: torch.nn.Module, grads: bool = False) -> torch.Tensor:
    """Population moments of every block weight (or its ``.grad``) in every block.

    Returns float64 of shape (n_layer, len(block_roles), 3): per layer, per role of the model's
    family's ``block_roles`` (GPT-2: q, k, v, attn_proj, mlp_fc, mlp_proj; Llama: q, k, v, o,
    gate, up, down), the mean, population variance (divide by N, over all entries of that weight
    part) and RMS, accumulated in float64 whatever the training dtype. A missing gradient gives
    NaN.

    The result stays on the weights' device (no host synchronisation: read it once per record).
    One pass of :func:`hf_init.core.moments.stacked_block_sums` per weight kind over all
    layers. Sharded (FSDP2 DTensor) weights are never gathered: each rank reduces its own
    shards and one all-reduce makes the totals, so every rank must call this.
    """
    family, blocks = model_blocks(model)
    kinds = []
    for entry in family.block_weights:  # column blocks here = the parts Weight.split cuts
        # attrgetter: get_submodule's checks cost more than the sums
        weight = attrgetter(f"{entry.path}.weight")
        params = [weight(block) for block in blocks]
        kinds.append(([p.grad if grads else p for p in params], len(entry.parts)))
    return sharded_block_moments(kinds)


def variance_records(
    step: int, weights: torch.Tensor, grads: torch.Tensor | None, *, roles: tuple[str, ...]
) -> list[dict]:
    """The records of one step from :func:`block_statistics` of the weights and (or ``None``)
    of the gradients, whose columns are ``roles`` (the family's ``block_roles``): one per (layer,
    role) with ``var``, ``mean``, ``rms``, ``grad_var``, ``grad_rms`` (null where not finite or
    not measured). Both are read to the host at once."""
    if weights.shape[1] != len(roles):
        raise ValueError(f"{weights.shape[1]} weight kinds per layer, {len(roles)} roles given")
    if grads is not None:
        w, g = torch.stack([weights, grads.to(weights.device)]).tolist()
    else:
        w, g = weights.tolist(), None
    records = []
    for layer, rows in enumerate(w):
        for i, role in enumerate(roles):
            mean, var, rms = rows[i]
            gvar, grms = (g[layer][i][1], g[layer][i][2]) if g is not None else (None, None)
            records.append(
                make_record(
                    step,
                    layer,
                    role,
                    {"var": var, "mean": mean, "rms": rms, "grad_var": gvar, "grad_rms": grms},
                )
            )
    return records


def learning_rate_record(step: int, lr: float) -> dict:
    """The whole-model record of the learning rate in effect at ``step``."""
    return make_record(step, None, None, {"learning_rate": lr})


class StepRecorder(TrainerCallback):
    """Records at step 0 (``on_train_begin``: before any update), every ``every`` optimizer steps
    (default: the Trainer's logging interval) and at the last step (``state.max_steps``), each
    step once; a run resumed from the checkpoint of step s records from step s + 1 on (its records
    up to s are kept). A recorder says what in :meth:`measure` (called on every rank: a sharded
    measurement needs them all) and may read what an update applies in :meth:`before_update`; the
    main process hands the records to every sink and closes them at the end of training.
    ``guards`` (given on every rank; ``write`` raising :class:`~hf_init.core.cli.RunStopped`)
    check the records on the main process before any sink writes them, and their stop is raised
    on every rank (:func:`~hf_init.lm.guards.stop_on_every_rank`)."""

    what = "recording"  # named in the error on a bad interval

    def __init__(self, sinks=(), every: int | None = None, guards=()):
        if every is not None and every < 1:
            raise ValueError(f"{self.what} interval must be >= 1 step, got {every}")
        self.sinks = list(sinks)
        self.guards = list(guards)
        self.every = every
        self._every = every
        self._last_step = -1

    def measure(self, step: int, state, **kwargs) -> list[dict]:
        """The records of ``step`` (empty: nothing to write); ``kwargs`` are the event's
        (``model``, ``optimizer``, ...)."""
        raise NotImplementedError

    def before_update(self, step: int, state, **kwargs) -> None:
        """Called before the optimizer applies update ``step`` of a record step (the gradients
        are clipped and not yet zeroed, the scheduler has not stepped)."""

    def interval(self, args, state) -> int:
        """``every``, else the logging interval in optimizer steps: ``state.logging_steps``, which
        the Trainer sets (``TrainerState.compute_steps``, before ``on_train_begin``) from
        ``args.logging_steps``, turning a fraction < 1 into ``ceil(fraction * max_steps)``."""
        if self.every is not None:
            return self.every
        steps = getattr(state, "logging_steps", None) or args.logging_steps
        if steps < 1:  # a state the Trainer did not prepare: convert the fraction the same way
            steps = math.ceil(steps * state.max_steps) if state.max_steps else 1
        return max(1, int(steps))

    def should_record(self, step: int, state) -> bool:
        return step == 0 or step % self._every == 0 or step == state.max_steps

    def flush(self) -> None:
        """Every sink's writes on disk (whole lines, TensorBoard events), e.g. before a stop."""
        for sink in self.sinks:
            sink.flush()

    def on_train_begin(self, args, state, control, **kwargs):
        self._every = self.interval(args, state)
        if state.global_step > 0:  # resumed from a checkpoint: its steps are recorded already
            self._last_step = state.global_step
            return
        self._record(state, state.global_step, kwargs)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step + 1  # the step this update completes
        if self.should_record(step, state):
            self.before_update(step, state, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.should_record(state.global_step, state):
            self._record(state, state.global_step, kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            for sink in self.sinks:
                sink.close()

    def _record(self, state, step: int, kwargs: dict) -> None:
        if step <= self._last_step:
            return
        self._last_step = step
        records = self.measure(step, state, **kwargs)
        if self.guards:
            stop = None
            if records and state.is_world_process_zero:
                try:
                    for guard in self.guards:
                        guard.write(records)
                except RunStopped as err:
                    stop = err
            stop = stop_on_every_rank(stop)
            if stop is not None:
                raise stop
        if records and state.is_world_process_zero:
            for sink in self.sinks:
                sink.write(records)


class QKVVarianceCallback(StepRecorder):
    """Per layer, the ``var``, ``mean`` and ``rms`` of every block weight (GPT-2: q, k, v parts of
    ``c_attn``, ``attn_proj``, ``mlp_fc``, ``mlp_proj``; Llama: q k v o gate up down) and
    ``grad_var``, ``grad_rms`` of the gradient that step's update applied (:func:`variance_records`;
    null at step 0). That gradient is read before the optimizer step: clipped, of the step's mean
    loss (docs/traps.md says how the Trainer scales it). Under FSDP2 every rank reduces its own
    shards and joins one all-reduce; otherwise only the main process computes."""

    what = "variance recording"

    def __init__(self, sinks=(), every: int | None = None, guards=()):
        super().__init__(sinks, every, guards)
        self._grads: tuple[int, torch.Tensor] | None = None
        self._sharded: bool | None = None  # FSDP2 DTensor weights: every rank joins the all-reduce

    def before_update(self, step, state, model=None, **kwargs):
        if self._computes(state, model):
            self._grads = (step, block_statistics(model, grads=True))

    def measure(self, step, state, model=None, **kwargs):
        grads = self._grads[1] if self._grads is not None and self._grads[0] == step else None
        self._grads = None
        if not self._computes(state, model):
            return []
        weights = block_statistics(model)
        if not state.is_world_process_zero:
            return []
        return variance_records(step, weights, grads, roles=model_blocks(model)[0].block_roles)

    def _computes(self, state, model) -> bool:
        if model is None:
            return False
        if self._sharded is None:
            self._sharded = _is_sharded(model)
        return state.is_world_process_zero or self._sharded


def current_learning_rate(optimizer) -> float | None:
    """The learning rate of the optimizer's first parameter group (None without an optimizer)."""
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None


class LearningRateCallback(StepRecorder):
    """The learning rate at the record steps, one whole-model record each (what
    :mod:`hf_init.lm.equilibration` reads): at step s the one update s applied (read before the
    scheduler steps), at step 0 the one the first update will apply. Main process only."""

    what = "learning-rate recording"

    def __init__(self, sinks=(), every: int | None = None):
        super().__init__(sinks, every)
        self._lr: dict[int, float] = {}

    def before_update(self, step, state, optimizer=None, **kwargs):
        lr = current_learning_rate(optimizer)
        if lr is not None:
            self._lr[step] = lr

    def measure(self, step, state, optimizer=None, **kwargs):
        lr = current_learning_rate(optimizer) if step == 0 else self._lr.pop(step, None)
        if lr is None or not state.is_world_process_zero:
            return []
        return [learning_rate_record(step, lr)]


def build_recorders(
    trainer,
    out: Path,
    every: int | None = None,
    resumed_step: int | None = None,
    eval_dataset=None,
    probe_blocks: int = 0,
    probe_every: int | None = None,
    spikes: dict | None = None,
    step_values=None,
) -> list[StepRecorder]:
    """Add to ``trainer`` every recorder a run uses, with their sinks, and return them: the Q/K/V
    variances, the learning rate and the spike monitor (``spikes``: its ``window``,
    ``threshold``, ``skip_updates``; when None, the defaults of
    :class:`~hf_init.lm.args.RunArguments`; ``step_values``: the trainer's
    :class:`~hf_init.lm.spikes.StepValues`, made here when not given) every ``every`` steps
    (default the logging interval), and the attention probe on the first ``probe_blocks`` blocks
    of ``eval_dataset`` (none when 0) every ``probe_every`` steps (default ``every``), into
    ``out/variance.jsonl`` and, when the run reports to TensorBoard, the Trainer's own writer
    (:func:`tensorboard_before_recorders`). Sinks exist on the main process only (the one that
    writes). ``resumed_step``: a run resumed from that step's checkpoint appends to the JSONL."""
    from hf_init.lm.args import RunArguments
    from hf_init.lm.attention_probe import AttentionProbeCallback, probe_batch  # builds on this
    from hf_init.lm.spikes import SpikeMonitor, StepValues

    tensorboard = tensorboard_before_recorders(trainer, out, resumed_step)
    main = trainer.args.process_index == 0
    jsonl = [JsonlSink(out / VARIANCE_FILE, append=resumed_step is not None)] if main else []

    def tensorboard_sink(sink_class, **options) -> list:
        if not main or tensorboard is None:
            return []
        return [sink_class(lambda: tensorboard.tb_writer, owns_writer=False, **options)]

    # a non-finite variance stops every rank before its step is written (a non-finite gradient,
    # caught by guards.DivergenceStop, comes first in practice)
    recorders = [
        QKVVarianceCallback(
            jsonl + tensorboard_sink(TensorBoardSink), every, guards=[NonFiniteRecords()]
        )
    ]
    if probe_blocks > 0:
        probe = probe_batch(eval_dataset, probe_blocks)
        sinks = jsonl + tensorboard_sink(AttentionTensorBoardSink)
        recorders.append(AttentionProbeCallback(probe, sinks, probe_every or every))
    recorders.append(
        LearningRateCallback(jsonl + tensorboard_sink(WholeModelTensorBoardSink), every)
    )
    spike_sinks = jsonl + tensorboard_sink(WholeModelTensorBoardSink, prefix="stability")
    spikes = spikes or RunArguments().spikes()  # the defaults of scripts/pretrain.py
    values = step_values or StepValues(trainer)
    recorders.append(SpikeMonitor(values, spike_sinks, every, **spikes))
    for recorder in recorders:
        trainer.add_callback(recorder)
    return recorders


def tensorboard_before_recorders(trainer, out: Path, resumed_step: int | None):
    """The Trainer's ``TensorBoardCallback`` (None when the run does not report to TensorBoard),
    taken with the public ``pop_callback`` and put back before the recorders are added, so that
    its writer exists when step 0 is recorded. A resumed run continues in the interrupted run's
    latest events folder with a writer whose ``purge_step`` hides the points written after the
    checkpoint (TensorBoard's own mechanism for restarts: no duplicated points)."""
    from transformers.integrations import TensorBoardCallback

    tensorboard = trainer.pop_callback(TensorBoardCallback)
    if tensorboard is None:
        return None
    trainer.add_callback(tensorboard)
    previous = latest_events_dir(out)
    if resumed_step is not None and previous is not None and trainer.args.process_index == 0:
        from torch.utils.tensorboard import SummaryWriter

        tensorboard.logging_dir = str(previous)
        tensorboard.tb_writer = SummaryWriter(log_dir=str(previous), purge_step=resumed_step + 1)
    return tensorboard
