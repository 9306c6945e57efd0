"""Per-layer variance records of a pretraining run (``variance.jsonl``) as arrays, and the
start-vs-end summary printed at the end of a run.

Every number here is read from the records (``hf_init.core.records.read_records``): population
variances over all entries of a weight part, as recorded by
:class:`hf_init.lm.recorders.QKVVarianceCallback`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hf_init.lm.families import QKV


@dataclass
class VarianceTable:
    """``values[(role, statistic)]`` is an (n_layer, n_steps) float array (NaN where not
    recorded); ``table[role]`` is the role's ``var``, ``table[role, statistic]`` any statistic."""

    steps: np.ndarray
    layers: np.ndarray
    values: dict[tuple[str, str], np.ndarray]

    def __getitem__(self, key) -> np.ndarray:
        return self.values[(key, "var") if isinstance(key, str) else tuple(key)]


def variance_table(frame) -> VarianceTable:
    """Pivot the long table of :func:`hf_init.core.records.read_records` (one row per step, layer,
    role, statistic) into per-(role, statistic) (layer x step) arrays."""
    frame = frame.dropna(subset=["step", "layer", "role"])
    if (
        "head" in frame
    ):  # per-head attention records (hf_init.lm.attention_probe) are not layer weights
        frame = frame[frame["head"].isna()]
    if frame.empty:
        raise ValueError("no variance records")
    frame = frame.astype({"step": int, "layer": int})
    steps = np.array(sorted(frame["step"].unique()))
    layers = np.array(sorted(frame["layer"].unique()))
    values = {}
    for (role, stat), group in frame.groupby(["role", "statistic"], sort=False):
        grid = (
            group.set_index(["layer", "step"])["value"]
            .unstack("step")
            .reindex(index=layers, columns=steps)
        )
        values[(role, stat)] = grid.to_numpy(dtype=float)
    return VarianceTable(steps, layers, values)


def start_end_summary(table: VarianceTable, names=QKV) -> list[dict]:
    """Per layer and name: the variance at the first and the last recorded step, their ratio
    and the step by which half of that change had happened (:func:`half_change_steps`)."""
    rows = []
    half = {n: half_change_steps(table, n) for n in names}
    for i, layer in enumerate(table.layers):
        row = {"layer": int(layer)}
        for n in names:
            start, end = float(table[n][i, 0]), float(table[n][i, -1])
            row[n] = {
                "start": start,
                "end": end,
                "ratio": end / start if start > 0 else math.nan,
                "half_change_step": int(half[n][i]),
            }
        rows.append(row)
    return rows


def half_change_steps(table: VarianceTable, name: str) -> np.ndarray:
    """Per layer: the first recorded step at which ``name``'s variance has covered half of its
    total change from the first to the last recorded step (how fast each layer moves)."""
    v = table[name]
    change = v - v[:, :1]
    total = change[:, -1:]
    reached = np.abs(change) >= np.abs(total) / 2
    return table.steps[np.argmax(reached, axis=1)]


def layer_spread(table: VarianceTable, name: str) -> np.ndarray:
    """Max over min across layers of ``name``'s variance at each recorded step (1 = all
    layers equal): how narrow the band of layers is."""
    v = table[name]
    return np.nanmax(v, axis=0) / np.nanmin(v, axis=0)


def format_summary(table: VarianceTable, names=QKV) -> str:
    """A text table: per layer, start -> end variance of Q, K, V and the ratio end/start."""
    first, last = int(table.steps[0]), int(table.steps[-1])
    head = (
        f"population variance of each layer's weights, step {first} -> step {last} "
        f"(x = end/start, h = step by which half of the change happened)"
    )
    lines = [head, "layer " + "".join(f"{n.upper():>39}" for n in names)]
    for row in start_end_summary(table, names):
        cells = "".join(
            f"{row[n]['start']:>12.4e} -> {row[n]['end']:.4e} x{row[n]['ratio']:<5.2f}"
            f"h{row[n]['half_change_step']:<5d}"
            for n in names
        )
        lines.append(f"{row['layer']:>5} {cells}")
    spreads = "  ".join(
        f"{n.upper()} {layer_spread(table, n)[0]:.2f} -> {layer_spread(table, n)[-1]:.2f}"
        for n in names
    )
    lines.append(f"spread across layers (max/min variance): {spreads}")
    return "\n".join(lines)
