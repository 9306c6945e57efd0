"""The two MLP studies: which members an ensemble holds (std sweep, controlled scheme comparison),
their keys, and what a study writes into its output folder.

Every member of a study is keyed (sweep: ``depth``, ``std``, ``seed``; comparison:
``activation``, ``scheme``, ``seed``). What was measured on it is written as records
(:mod:`hf_init.core.records`) into ``records.jsonl``:

- per layer and record step: ``step``, ``layer`` (0-based linear layer, the last one gives the
  logits), ``role`` ``"linear"``, statistics ``preact_var``, ``act_var``, ``grad_preact_var``,
  ``grad_weight_var`` (see :class:`~hf_init.mlp.training.EnsembleRecord`);
- per record step: ``step``, ``layer`` null, ``role`` null, statistics ``train_loss``,
  ``test_loss``, ``train_acc``, ``test_acc`` (full splits).

``results.csv`` (one row per member) and ``summary.json`` are the summaries; the figures read
``records.jsonl`` back through :func:`hf_init.core.records.read_records`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hf_init.mlp.model import Ensemble, MLPShape, ensemble_weights, standard_normal_draws
from hf_init.mlp.training import EnsembleRecord, TrainConfig, train_ensemble
from hf_init.theory.recursions import scheme_weight_stds

RECORDS = "records.jsonl"
# what every study writes into --output_dir (write_study below; the figures are named by each
# job): any of them means the folder already holds a study. layer_stats.csv and curves.csv are
# files of older study folders: such a folder is refused too and, with --overwrite, moved aside
# whole.
STUDY_FILES = ("summary.json", "results.csv", RECORDS, "tb", "layer_stats.csv", "curves.csv")
LAYER_STATISTICS = ("preact_var", "act_var", "grad_preact_var", "grad_weight_var")
SPLIT_STATISTICS = ("train_loss", "test_loss", "train_acc", "test_acc")


@dataclass
class StudyRun:
    """One trained ensemble of a study with the keys (std/scheme, seed, ...) of its members."""

    shape: MLPShape
    record: EnsembleRecord
    member_keys: list[dict]

    @property
    def steps(self) -> int:
        """Optimizer steps every member took (or would have, had it not diverged)."""
        return int(self.record.step_loss.shape[0])


def log_grid(lo: float, hi: float, per_decade: int) -> list[float]:
    """Log-spaced stds from lo to hi inclusive, ``per_decade`` points per decade."""
    n = int(round(math.log10(hi / lo) * per_decade)) + 1
    return [float(v) for v in np.logspace(math.log10(lo), math.log10(hi), n)]


def _train_shared_draws(
    data,
    shape: MLPShape,
    seeds: list[int],
    groups: list[tuple[dict, list[float]]],
    cfg: TrainConfig,
    progress: bool,
    desc: str,
) -> StudyRun:
    """Train one ensemble of every (group, seed) member: ``groups`` are (key, per-layer stds);
    member (group, seed) has weights draw[seed] * stds, the same standard-normal draw of ``seed``
    for every group, and its key is ``{**key, "seed": seed}``."""
    draws = standard_normal_draws(shape, seeds)
    keys, seed_index, layer_stds = [], [], []
    for key, per_layer in groups:
        for k, seed in enumerate(seeds):
            keys.append({**key, "seed": seed})
            seed_index.append(k)
            layer_stds.append(per_layer)
    model = Ensemble(shape, ensemble_weights(draws, seed_index, layer_stds)).to(
        data.x_train.device
    )  # the data's device
    record = train_ensemble(model, data, cfg, progress, desc=f"{desc}: {len(keys)} members")
    return StudyRun(shape, record, keys)


def run_sweep(
    data,
    stds: list[float],
    seeds: list[int],
    depths: list[int],
    width: int,
    activation: str,
    cfg: TrainConfig,
    progress: bool = True,
) -> list[StudyRun]:
    """Train every (std, seed) member with the scheme ``normal`` (every weight matrix, the
    first layer and the output layer included, has the same std), one ensemble per depth.
    Seed s gives the same standard-normal draw to every std (only the scale differs)."""
    runs = []
    for depth in depths:
        shape = MLPShape(data.n_features, width, depth, data.n_classes, activation)
        groups = [
            ({"depth": depth, "std": std}, scheme_weight_stds("normal", shape.widths(), std=std))
            for std in stds
        ]
        runs.append(
            _train_shared_draws(data, shape, seeds, groups, cfg, progress, f"depth {depth}")
        )
    return runs


COMPARE_SCHEMES = ("kaiming_normal", "xavier_normal")


def check_controlled_schemes(schemes: list[str]) -> None:
    """ValueError unless every scheme is registered and draws normal weights (a uniform scheme
    would need its own uniform draw, so it could not share the seed's normal draw)."""
    from hf_init.core.schemes import get_scheme

    for name in schemes:
        if get_scheme(name).distribution != "normal":
            raise ValueError(
                f"scheme {name!r} draws uniform weights; the controlled comparison rescales one "
                "normal draw, so use normal schemes (e.g. kaiming_normal, xavier_normal)"
            )


def run_compare(
    data,
    schemes: list[str],
    seeds: list[int],
    depth: int,
    width: int,
    activations: list[str],
    cfg: TrainConfig,
    progress: bool = True,
) -> list[StudyRun]:
    """For each activation, one ensemble of every (scheme, seed): member (scheme, seed) has
    weights draw[seed] * std_scheme(layer), the same standard-normal draw for every scheme,
    and every member sees the same minibatches. Kaiming uses the activation's gain
    (``SchemeOptions(nonlinearity=activation)``), fan_in mode; Xavier gain 1. Only
    normal-distribution schemes: a uniform scheme would need its own uniform draw, so it could
    not share the normal draw (the comparison would not be controlled)."""
    check_controlled_schemes(schemes)
    runs = []
    for activation in activations:
        shape = MLPShape(data.n_features, width, depth, data.n_classes, activation)
        groups = [
            (
                {"activation": activation, "scheme": name},
                scheme_weight_stds(name, shape.widths(), nonlinearity=activation),
            )
            for name in schemes
        ]
        runs.append(_train_shared_draws(data, shape, seeds, groups, cfg, progress, activation))
    return runs


# --- what a study writes -----------------------------------------------------------------


def member_records(run: StudyRun) -> list[dict]:
    """The records of every member of ``run`` (schema in the module docstring), member by member,
    each member's layer records then its split records per step."""
    from hf_init.core.records import make_record

    rec = run.record
    out = []
    R, M, L = rec.preact_var.shape
    for m, keys in enumerate(run.member_keys):
        for r in range(R):
            step = int(rec.record_steps[r])
            for l in range(L):
                stats = {name: float(getattr(rec, name)[r, m, l]) for name in LAYER_STATISTICS}
                out.append(make_record(step, l, "linear", stats, **keys))
            stats = {name: float(getattr(rec, name)[r, m]) for name in SPLIT_STATISTICS}
            out.append(make_record(step, None, None, stats, **keys))
    return out


class EventsFile:
    """A TensorBoard events file written in the calling thread by tensorboard's own record writer
    (``with EventsFile(run_folder) as events``). A study writes each member's run whole at the
    end, so ``SummaryWriter``'s background writer thread would only add a hand-over per event,
    which costs more than the event. Named and begun as ``SummaryWriter``'s files are (the
    ``events.out.tfevents.*`` name TensorBoard reads, a first ``file_version`` event)."""

    def __init__(self, logdir: str | Path):
        import os
        import socket

        from tensorboard.summary.writer.record_writer import RecordWriter

        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self._file = open(logdir / f"{name}.{id(self)}", "wb")
        self._records = RecordWriter(self._file)
        self._write(file_version="brain.Event:2")

    def _write(self, **fields) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._records.write(Event(wall_time=time.time(), **fields).SerializeToString())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """``values`` (tag -> number) at ``step``, as one event."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        if values:
            summary = Summary(
                value=[Summary.Value(tag=t, simple_value=v) for t, v in values.items()]
            )
            self._write(step=step, summary=summary)

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        """The HParams entry of this run (``SummaryWriter.add_hparams``' summaries and metric
        scalars, here in the run's own file)."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        for summary in hparams_summaries(hparams, metrics):
            self._write(summary=summary)
        self.scalars(0, metrics)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._records.close()


def write_tensorboard(
    logdir, record: EnsembleRecord, run_names: list[str], hparams: list[dict], metrics: list[dict]
) -> int:
    """One TensorBoard run per member under ``logdir``: minibatch loss every step, full-split
    loss/accuracy and per-layer variances at record steps, and its HParams entry (in the same run
    folder, so the dashboard links hparams to the curves). Returns the run count."""
    n_layers = record.act_var.shape[2]
    for m, name in enumerate(run_names):
        with EventsFile(f"{logdir}/{name}") as events:
            for step, loss in enumerate(record.step_loss[:, m].tolist()):
                if math.isfinite(loss):
                    events.scalars(step, {"loss/minibatch": loss})
            for r, step in enumerate(record.record_steps):
                values = {
                    f"eval/{key}": float(getattr(record, key)[r, m]) for key in SPLIT_STATISTICS
                }
                for l in range(n_layers):
                    for key in ("act_var", "grad_preact_var"):
                        values[f"{key}/layer{l + 1}"] = float(getattr(record, key)[r, m, l])
                events.scalars(int(step), {k: v for k, v in values.items() if math.isfinite(v)})
            events.hparams(hparams[m], {f"hparam/{k}": float(v) for k, v in metrics[m].items()})
    return len(run_names)


@dataclass
class TensorBoardRuns:
    """How a study names its members' TensorBoard runs and what it logs as their HParams:
    ``name(keys)``, ``hparams(keys)`` and ``metrics(results_row)``."""

    name: Callable[[dict], str]
    hparams: Callable[[dict], dict]
    metrics: Callable[[dict], dict]


def write_study(
    out: Path,
    runs: list[StudyRun],
    rows: list[dict],
    dataset: str,
    figures: dict[str, Callable],
    tb: TensorBoardRuns,
    summary: dict,
    t0: float,
) -> int:
    """Write a study into ``out`` (already checked, see :data:`STUDY_FILES`): results.csv (one
    row per member, ``rows`` in member order, run by run), records.jsonl, each figure
    ``figures[name](records_table, out / name)`` (the table from
    :func:`hf_init.core.records.read_records`), tb/, then summary.json (``summary`` plus
    ``total_seconds`` since ``t0``, ``tensorboard_runs`` and the package ``versions``, as in a
    pretraining run's run_info.json). Returns the TensorBoard run count."""
    from hf_init.core.outputs import package_versions, write_csv, write_json
    from hf_init.core.records import read_records, write_records

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", [{"dataset": dataset, **r} for r in rows])
    write_records(out / RECORDS, [rec for run in runs for rec in member_records(run)])
    table = read_records(out / RECORDS)
    for name, draw in figures.items():
        draw(table, out / name)
    n_tb, i = 0, 0
    for run in runs:
        members = rows[i : i + len(run.member_keys)]
        i += len(run.member_keys)
        n_tb += write_tensorboard(
            out / "tb",
            run.record,
            [tb.name(k) for k in run.member_keys],
            [tb.hparams(k) for k in run.member_keys],
            [tb.metrics(r) for r in members],
        )
    write_json(
        out / "summary.json",
        {
            **summary,
            "total_seconds": time.perf_counter() - t0,
            "tensorboard_runs": n_tb,
            "versions": package_versions(),
        },
    )
    return n_tb
