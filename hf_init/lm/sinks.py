"""Where measured records go: sinks handed to a measuring callback (the callback never knows which).

A sink has ``write(records)`` (a list of records of :mod:`hf_init.core.records`, all of one step)
and ``close()``. The callback calls them on the main process only.

* :class:`JsonlSink`: appends the records to a JSONL file, one line each, flushed per step (a
  reader or a crash sees whole lines). The file is opened, fresh, at the first write.
* :class:`TensorBoardSink`: the q, k, v weight and gradient variances of each layer as
  TensorBoard scalars at their exact step, with a custom-scalars layout overlaying all layers.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from hf_init.core.records import append_records
from hf_init.lm.families import QKV


class JsonlSink:
    """Records appended to ``path`` (opened with mode ``w`` at the first write: a fresh file per
    training run; the output-folder check ran before training; ``append=True``, a resumed run:
    mode ``a``, after the records past the checkpoint were set aside)."""

    def __init__(self, path: str | os.PathLike, append: bool = False):
        self.path = Path(path)
        self.append = append
        self._file = None
        self.records_written = 0

    def write(self, records: list[dict]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a" if self.append else "w", encoding="utf-8")
        self.records_written += append_records(self._file, records)

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
    """A sink writing to a TensorBoard ``writer``: a ``torch.utils.tensorboard.SummaryWriter``, or
    a function returning one, called at the first write (the Trainer's writer exists only once
    training begins)."""

    def __init__(self, writer):
        self._writer = writer

    @property
    def writer(self):
        if callable(self._writer) and not hasattr(self._writer, "add_scalar"):
            self._writer = self._writer()
        return self._writer


class TensorBoardSink(WriterSink):
    """The ``var`` and ``grad_var`` of the records whose role is in ``roles`` (q, k, v), written
    to ``writer`` (see :class:`WriterSink`) with tags from :func:`tensorboard_tag`. ``close``
    closes the writer only if the sink ``owns_writer``."""

    def __init__(self, writer, roles=QKV, owns_writer: bool = True):
        super().__init__(writer)
        self.roles = tuple(roles)
        self.owns_writer = owns_writer
        self._layout_written = False

    def write(self, records: list[dict]) -> None:
        if not records or self.writer is None:
            return
        if not self._layout_written:
            self.writer.add_custom_scalars(custom_scalars_layout(self.roles))
            self._layout_written = True
        n_layer = 1 + max((r["layer"] for r in records), default=0)
        scalars, steps = {}, {r["step"] for r in records}
        for r in records:
            if r["role"] not in self.roles:
                continue
            for stat, grad in (("var", False), ("grad_var", True)):
                value = r.get(stat)
                if value is not None and math.isfinite(value):
                    scalars[tensorboard_tag(r["role"], r["layer"], n_layer, grad)] = value
        if len(steps) != 1:
            raise ValueError(
                f"TensorBoardSink.write takes the records of one step, got steps {sorted(steps)}"
            )
        _add_scalars_one_event(self.writer, scalars, steps.pop())

    def flush(self) -> None:
        if not callable(self._writer) or hasattr(
            self._writer, "add_scalar"
        ):  # only a writer that exists
            if self._writer is not None:
                self._writer.flush()

    def close(self) -> None:
        if self.owns_writer and self.writer is not None:
            self.writer.close()


def _add_scalars_one_event(writer, scalars: dict[str, float], step: int) -> None:
    """Write many scalars at one step as a single event (one queue hand-off instead of one per
    tag; TensorBoard reads each value as its own scalar series). Falls back to add_scalar."""
    get_file_writer = getattr(writer, "_get_file_writer", None)
    if get_file_writer is None:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    # the Summary.Value that torch.utils.tensorboard.summary.scalar makes (its old style, simple_value),
    # built directly: scalar() converts each Python float through numpy first
    summary = Summary(
        value=[Summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars.items()]
    )
    get_file_writer().add_summary(summary, step)
