"""The one record format of every study, and its one reader.

A record is one flat JSON object, one line of a ``.jsonl`` file: ``step``, ``layer``, ``role``,
statistics (the names in :data:`STATISTICS`) and keys (every other field: ``scheme``, ``seed``,
...). :func:`read_records` turns any number of record files, the old ``variance.jsonl`` lines
included, into one long table; :func:`to_wide` pivots it to a column per statistic. The format
and which file holds what: ``docs/records.md``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

INDEX = ("step", "layer", "role")

# Every statistic a study records, named once: name -> what it is (over what it is computed).
STATISTICS: dict[str, str] = {
    # weights of a layer (GPT-2 callback): population moments over all entries of the weight block
    "var": "population variance of the weight block's entries",
    "mean": "mean of the weight block's entries",
    "rms": "root mean square of the weight block's entries (coord check: of the activation's)",
    "grad_var": "population variance of the gradient of the step's mean loss wrt the weight block",
    "grad_mean": "mean of that gradient's entries",
    "grad_rms": "root mean square of that gradient's entries",
    # signal through a layer (MLP studies): over the probe batch and the layer's units
    "preact_var": "variance of the layer's pre-activations over the probe batch and units",
    "act_var": "variance of the layer's activations over the probe batch and units",
    "grad_preact_var": "variance of the loss gradient w.r.t. the pre-activations",
    "grad_weight_var": "variance of the loss gradient w.r.t. the layer's weight",
    # whole model
    "train_loss": "mean cross-entropy over the full training split",
    "test_loss": "mean cross-entropy over the full test split",
    "train_acc": "accuracy over the full training split",
    "test_acc": "accuracy over the full test split",
    "loss": "training loss of the step (mean over the batch)",
    "learning_rate": "learning rate in effect at the step",
    # stability of a pretraining run (hf_init.lm.spikes, role `stability`): z over the last
    # `window` finite values before the step, population std; a spike is z > the threshold
    "grad_norm": "global L2 norm of the step's gradient before clipping",
    "loss_zscore": "(loss - mean) / std of the window of losses before the step",
    "grad_norm_zscore": "(grad_norm - mean) / std of the window of gradient norms before the step",
    "loss_spike": "1 when loss_zscore is above the spike threshold, else 0",
    "grad_norm_spike": "1 when grad_norm_zscore is above the spike threshold, else 0",
    "update_skipped": "1 when the step's update was not applied (a gradient-norm spike), else 0",
    "spike_count": "steps up to this one with a loss or gradient-norm spike",
    "spike_score": "spike_count / the steps up to this one that had a full window",
    "skipped_updates": "updates not applied up to this step",
    # attention behaviour (GPT-2, probe batch): per layer (and head when a `head` key is present)
    "logit_std": (
        "std of the attention logits q.k/sqrt(d_head) over the probe batch's causal entries"
    ),
    "entropy": (
        "mean entropy (nats) of the attention distributions over the probe batch's queries"
    ),
    # theory check: a quantity predicted by the variance recursion vs measured on networks
    "predicted": "value predicted by the variance-propagation recursion",
    "measured": "value measured on real networks (mean over seeds)",
    "measured_sem": "standard error of the measured mean over seeds",
    "relative_error": "measured / predicted - 1",
    "tolerance": "allowed |relative_error|: k finite-width standard deviations of the seed mean",
    "predicted_uncorrelated": (
        "GPT-2 value predicted treating tokens as uncorrelated across positions"
    ),
    "relative_error_uncorrelated": "measured / predicted_uncorrelated - 1",
}


def _clean(value):
    """A statistic as JSON: non-finite floats become null, numpy/torch scalars Python numbers."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def make_record(step: int | None, layer: int | None, role: str | None, stats: dict, **keys) -> dict:
    """One record: ``keys`` first, then step/layer/role, then the statistics (names checked
    against :data:`STATISTICS`, values made strict-JSON)."""
    unknown = [name for name in stats if name not in STATISTICS]
    if unknown:
        raise KeyError(
            f"unknown statistic(s) {unknown}: declare them in hf_init.core.records.STATISTICS"
        )
    clash = [k for k in keys if k in STATISTICS or k in INDEX]
    if clash:
        raise KeyError(f"record keys {clash} collide with statistic or index names")
    return {
        **keys,
        "step": step,
        "layer": layer,
        "role": role,
        **{k: _clean(v) for k, v in stats.items()},
    }


_ENCODER = json.JSONEncoder(
    allow_nan=False
)  # one encoder: json.dumps with an option builds one per call


def dump_lines(records: Iterable[dict]) -> str:
    """Records as JSONL text (one object per line, each line ending in a newline)."""
    return "".join(_ENCODER.encode(r) + "\n" for r in records)


def append_records(f: IO[str], records: Iterable[dict]) -> int:
    """Append records to an open text file and flush (a reader or a crash sees whole lines).
    Returns the number written."""
    records = list(records)
    if records:
        f.write(dump_lines(records))
        f.flush()
    return len(records)


def write_records(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """A whole record file, atomically."""
    from hf_init.core.outputs import write_atomic

    text = dump_lines(records)
    return write_atomic(path, lambda f: f.write(text))


class RecordLine(NamedTuple):
    """One non-blank line of a record file: its 1-based number, its text as in the file (newline
    included, added where the file's last line has none), its JSON object, or ``None`` with the
    parser's ``problem`` where the line is not JSON (a line a crash cut)."""

    number: int
    text: str
    record: dict | None
    problem: str | None


def record_lines(path: str | os.PathLike) -> Iterator[RecordLine]:
    """Every non-blank line of a record file, parsed: the one place a record file is read line
    by line (:func:`iter_records`, :func:`split_at_step`)."""
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if not line.strip():
            continue
        try:
            record, problem = json.loads(line), None
        except json.JSONDecodeError as err:
            record, problem = None, err.msg
        yield RecordLine(number, line if line.endswith("\n") else line + "\n", record, problem)


def iter_records(path: str | os.PathLike) -> Iterator[dict]:
    """The records of one file in file order, legacy variance lines converted. A torn last line
    (a crash mid-write) is skipped; a bad line elsewhere is a ValueError naming file and line."""
    lines = list(record_lines(path))
    for i, line in enumerate(lines):
        rec = line.record
        if rec is None:
            if i == len(lines) - 1:
                return
            raise ValueError(f"{path}:{line.number}: not a JSON record ({line.problem})")
        if "role" not in rec and "layer" in rec and "step" in rec:
            yield from legacy_variance_records(rec)
        else:
            yield rec


def split_at_step(path: str | os.PathLike, step: int) -> tuple[list[str], list[str]]:
    """(the lines of a record file up to ``step``, the others: those after it and any line that
    is not JSON), each as in the file. A record without a step counts as up to it; a missing file
    gives two empty lists."""
    up_to: list[str] = []
    after: list[str] = []
    if not Path(path).is_file():
        return up_to, after
    for line in record_lines(path):
        rec = line.record
        late = rec is None or (rec.get("step") is not None and rec["step"] > step)
        (after if late else up_to).append(line.text)
    return up_to, after


# legacy wide variance.jsonl: field name -> (statistic); role is the part before/after the affix
_LEGACY_AFFIXES = (
    ("grad_", "_rms", "grad_rms"),
    ("grad_", "", "grad_var"),
    ("", "_mean", "mean"),
    ("", "_rms", "rms"),
    ("", "", "var"),
)


def legacy_variance_records(line: dict) -> list[dict]:
    """One line of the old ``variance.jsonl`` (one object per (step, layer), fields ``q``,
    ``q_mean``, ``q_rms``, ``grad_q``, ``grad_q_rms`` for each weight name) as records."""
    by_role: dict[str, dict] = {}
    for field, value in line.items():
        if field in ("step", "layer"):
            continue
        for prefix, suffix, stat in _LEGACY_AFFIXES:
            if field.startswith(prefix) and field.endswith(suffix):
                role = field[len(prefix) : len(field) - len(suffix) if suffix else None]
                if role:
                    by_role.setdefault(role, {})[stat] = value
                    break
    return [
        make_record(line["step"], line["layer"], role, stats) for role, stats in by_role.items()
    ]


def read_records(paths, **keys):
    """Records of one or many files as one long ``pandas.DataFrame``: a column per key, then
    ``step``, ``layer``, ``role``, ``statistic``, ``value`` (one row per statistic; statistics
    recorded as null are NaN). ``keys`` are added as constant columns (e.g. ``scheme=...``,
    ``seed=...`` to tell runs apart when reading several)."""
    import pandas as pd

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    rows = []
    for path in paths:
        for rec in iter_records(path):
            ident = {**keys, **{k: v for k, v in rec.items() if k not in STATISTICS}}
            for stat, value in rec.items():
                if stat in STATISTICS:
                    rows.append({**ident, "statistic": stat, "value": value})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=[*keys, *INDEX, "statistic", "value"])
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype("float64")
    for col in ("step", "layer"):
        frame[col] = frame[col].astype("Int64")  # integers, <NA> where not about a step/layer
    front = [c for c in frame.columns if c not in (*INDEX, "statistic", "value")]
    return frame[[*front, *INDEX, "statistic", "value"]]


def to_wide(frame):
    """The long table back to one row per (keys..., step, layer, role), one column per statistic."""
    index = [c for c in frame.columns if c not in ("statistic", "value")]
    wide = frame.set_index([*index, "statistic"])["value"].unstack("statistic").reset_index()
    wide.columns.name = None
    return wide
