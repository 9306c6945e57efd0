"""Where records go: the sinks a recorder (:mod:`hf_init.lm.recorders`) hands its records to.

A sink has ``write(records)`` (records of :mod:`hf_init.core.records`, all of one step),
``flush()`` and ``close()``; a recorder calls them on the main process only and never knows
which sinks it has. The sinks own their files and writers:

* :class:`JsonlSink`: the records as lines of a JSONL file, flushed per step.
* :class:`TensorBoardSink`: q, k, v weight and gradient variances per layer.
* :class:`AttentionTensorBoardSink`: attention logit std and entropy per layer and head.
* :class:`WholeModelTensorBoardSink`: whole-model statistics (the learning rate, spikes).
* :class:`NonFiniteRecords`: a guard (:class:`~hf_init.lm.recorders.StepRecorder`'s
  ``guards``) stopping the run at the first weight variance that is not finite.

The TensorBoard sinks write a step's scalars as one event (:meth:`WriterSink.add_scalars`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from hf_init.core.records import STATISTICS, append_records
from hf_init.lm.families import QKV
from hf_init.lm.guards import divergence_error


class JsonlSink:
    """Records appended to ``path`` (opened with mode ``w`` at the first write: a fresh file per
    training run; the output-folder check ran before training; ``append=True``, a resumed run:
    mode ``a``, after the records past the checkpoint were set aside)."""

    def __init__(self, path: str | os.PathLike, append: bool = False):
        self.path = Path(path)
        self.append = append
        self._file = None

    def write(self, records: list[dict]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a" if self.append else "w", encoding="utf-8")
        append_records(self._file, records)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def tensorboard_tag(role: str, layer: int, n_layer: int, grad: bool = False) -> str:
    """``q_var/layer_03`` or ``q_grad_var/layer_03``: TensorBoard groups charts by the text
    before the first slash, so each projection (and its gradient) gets its own chart family."""
    width = max(2, len(str(n_layer - 1)))
    return f"{role}_{'grad_' if grad else ''}var/layer_{layer:0{width}d}"


def custom_scalars_layout(roles=QKV) -> dict:
    """A TensorBoard custom-scalars layout: one chart per projection overlaying all layers,
    for the weights and for their gradients."""
    return {
        "Q/K/V weight variance, all layers": {
            f"{r.upper()} variance": ["Multiline", [rf"{r}_var/layer_\d+"]] for r in roles
        },
        "Q/K/V gradient variance, all layers": {
            f"{r.upper()} gradient variance": ["Multiline", [rf"{r}_grad_var/layer_\d+"]]
            for r in roles
        },
    }


class WriterSink:
    """A sink writing scalars to a TensorBoard ``writer``: a ``SummaryWriter``, or a function
    returning one, called at the first write (the Trainer's writer exists only once training
    begins). ``close`` closes the writer only if the sink ``owns_writer``."""

    def __init__(self, writer, owns_writer: bool = True):
        self._writer = writer
        self.owns_writer = owns_writer

    @property
    def writer(self):
        if callable(self._writer) and not hasattr(self._writer, "add_scalar"):
            self._writer = self._writer()
        return self._writer

    def add_scalars(self, scalars: list[tuple[str, float]], step: int) -> None:
        """``(tag, value)`` pairs of one step as one event: a ``Summary`` holding them all, the
        one ``SummaryWriter.add_scalar`` builds for a single value, handed to the writer's
        ``file_writer.add_summary``. One event per value would cost its writer thread a wake-up
        and a checksum each, which shows in the profile of a recording step. A writer without a
        ``file_writer`` (closed, or another library's) gets ``add_scalar`` per value."""
        if not scalars:
            return
        file_writer = getattr(self.writer, "file_writer", None)
        if file_writer is None:
            for tag, value in scalars:
                self.writer.add_scalar(tag, value, step)
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag, simple_value=value) for tag, value in scalars]
        file_writer.add_summary(Summary(value=values), step)

    def flush(self) -> None:
        if self._writer is not None and hasattr(self._writer, "add_scalar"):  # one that exists
            self._writer.flush()

    def close(self) -> None:
        if self.owns_writer and self.writer is not None:
            self.writer.close()


class TensorBoardSink(WriterSink):
    """The ``var`` and ``grad_var`` of the records whose role is in ``roles`` (q, k, v), tagged by
    :func:`tensorboard_tag`, with a custom-scalars layout overlaying all layers."""

    def __init__(self, writer, roles=QKV, owns_writer: bool = True):
        super().__init__(writer, owns_writer)
        self.roles = tuple(roles)
        self._layout_written = False

    def write(self, records: list[dict]) -> None:
        if not records or self.writer is None:
            return
        if not self._layout_written:
            self.writer.add_custom_scalars(custom_scalars_layout(self.roles))
            self._layout_written = True
        n_layer = 1 + max(r["layer"] for r in records)
        scalars = [
            (tensorboard_tag(r["role"], r["layer"], n_layer, grad), r[stat])
            for r in records
            if r["role"] in self.roles
            for stat, grad in (("var", False), ("grad_var", True))
            if r.get(stat) is not None and math.isfinite(r[stat])
        ]
        self.add_scalars(scalars, records[0]["step"])


class AttentionTensorBoardSink(WriterSink):
    """Attention records (role ``attn``) as scalars: per layer the mean over heads
    (``attn_logit_std/layer_03``, ``attn_entropy/layer_03``) and per head
    (``attn_logit_std_heads/layer_03_head_1``, ...)."""

    def write(self, records: list[dict]) -> None:
        records = [r for r in records if r.get("role") == "attn"]
        if not records or self.writer is None:
            return
        width = max(2, len(str(max(r["layer"] for r in records))))
        scalars = []
        per_layer: dict[tuple[str, int], list[float]] = {}
        for r in records:
            for stat in ("logit_std", "entropy"):
                value = r.get(stat)
                if value is None or not math.isfinite(value):
                    continue
                tag = f"attn_{stat}_heads/layer_{r['layer']:0{width}d}_head_{r['head']}"
                scalars.append((tag, value))
                per_layer.setdefault((stat, r["layer"]), []).append(value)
        for (stat, layer), values in per_layer.items():
            scalars.append((f"attn_{stat}/layer_{layer:0{width}d}", sum(values) / len(values)))
        self.add_scalars(scalars, records[0]["step"])


class WholeModelTensorBoardSink(WriterSink):
    """The statistics of whole-model records (no layer) as scalars ``<prefix>/<statistic>``
    (``study/learning_rate``; the spike monitor's ``stability/loss_zscore``)."""

    def __init__(self, writer, owns_writer: bool = True, prefix: str = "study"):
        super().__init__(writer, owns_writer)
        self.prefix = prefix

    def write(self, records: list[dict]) -> None:
        if self.writer is None:
            return
        for r in records:
            if r.get("layer") is not None:
                continue
            scalars = [
                (f"{self.prefix}/{stat}", value)
                for stat, value in r.items()
                if stat in STATISTICS and value is not None and math.isfinite(value)
            ]
            self.add_scalars(scalars, r["step"])


class NonFiniteRecords:
    """Raises :func:`~hf_init.lm.guards.divergence_error` at the first record whose weight
    variance is not finite (recorded as null), naming step, layer and weight: a guard of a
    recorder (checked before its sinks write, so the records end at the last good step, and
    raised on every rank)."""

    def write(self, records: list[dict]) -> None:
        for r in records:
            if r.get("var") is None or not math.isfinite(r["var"]):
                raise divergence_error(
                    r["step"], f"non-finite variance of layer {r['layer']} {r['role']} weight"
                )

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
