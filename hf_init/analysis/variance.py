"""Per-layer variance records of a pretraining run (``variance.jsonl``) as arrays, and the
start-vs-end summary printed at the end of a run.

Every number here is read from the file: population variances over all entries of a weight
block, as recorded by :class:`hf_init.callbacks.QKVVarianceCallback`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class VarianceTable:
    """``values[name]`` is an (n_layer, n_steps) float array (NaN where not recorded)."""

    steps: np.ndarray
    layers: np.ndarray
    values: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]


def read_records(path: str | Path) -> list[dict]:
    """The JSON objects of a ``variance.jsonl`` file, in file order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def variance_table(records: list[dict]) -> VarianceTable:
    """Pivot records (one per (step, layer)) into per-name (layer x step) arrays."""
    if not records:
        raise ValueError("no variance records")
    steps = np.array(sorted({r["step"] for r in records}))
    layers = np.array(sorted({r["layer"] for r in records}))
    col = {s: i for i, s in enumerate(steps)}
    row = {l: i for i, l in enumerate(layers)}
    names = [k for k in records[0] if k not in ("step", "layer")]
    values = {n: np.full((len(layers), len(steps)), np.nan) for n in names}
    for r in records:
        for n in names:
            v = r.get(n)
            if v is not None:
                values[n][row[r["layer"]], col[r["step"]]] = v
    return VarianceTable(steps, layers, values)


def start_end_summary(table: VarianceTable, names=("q", "k", "v")) -> list[dict]:
    """Per layer and name: the variance at the first and the last recorded step, their ratio
    and the step by which half of that change had happened (:func:`half_change_steps`)."""
    rows = []
    half = {n: half_change_steps(table, n) for n in names}
    for i, layer in enumerate(table.layers):
        row = {"layer": int(layer)}
        for n in names:
            start, end = float(table[n][i, 0]), float(table[n][i, -1])
            row[n] = {"start": start, "end": end, "ratio": end / start if start > 0 else math.nan,
                      "half_change_step": int(half[n][i])}
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


def format_summary(table: VarianceTable, names=("q", "k", "v")) -> str:
    """A text table: per layer, start -> end variance of Q, K, V and the ratio end/start."""
    first, last = int(table.steps[0]), int(table.steps[-1])
    head = (f"population variance of each layer's weights, step {first} -> step {last} "
            f"(x = end/start, h = step by which half of the change happened)")
    lines = [head, "layer " + "".join(f"{n.upper():>39}" for n in names)]
    for row in start_end_summary(table, names):
        cells = "".join(f"{row[n]['start']:>12.4e} -> {row[n]['end']:.4e} x{row[n]['ratio']:<5.2f}"
                        f"h{row[n]['half_change_step']:<5d}" for n in names)
        lines.append(f"{row['layer']:>5} {cells}")
    spreads = "  ".join(f"{n.upper()} {layer_spread(table, n)[0]:.2f} -> {layer_spread(table, n)[-1]:.2f}" for n in names)
    lines.append(f"spread across layers (max/min variance): {spreads}")
    return "\n".join(lines)
