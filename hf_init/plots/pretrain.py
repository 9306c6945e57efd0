"""Figures of a pretraining run's per-layer variance records (``variance.jsonl`` in, through
``hf_init.records.read_records``; PNG out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis.variance import VarianceTable, variance_table
from ..gpt2_layout import QKV
from ..records import read_records
from . import pyplot, save_figure


def variance_vs_step(table: VarianceTable, path, statistic: str = "var", title: str = "weight variance"):
    """Q, K, V variance against step, one line per layer, coloured shallow (dark) to deep
    (yellow) with viridis; log y axis."""
    plt = pyplot()
    n = len(table.layers)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True, constrained_layout=True)
    for ax, name in zip(axes, QKV):
        values = table[name, statistic]
        for i, layer in enumerate(table.layers):
            ok = np.isfinite(values[i]) & (values[i] > 0)
            ax.plot(table.steps[ok], values[i][ok], color=cmap(i / max(1, n - 1)), lw=1.3)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{name.upper()} {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("population variance")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(table.layers[0], table.layers[-1]))
    fig.colorbar(sm, ax=axes, label="layer (shallow -> deep)")
    return save_figure(fig, path)


def centred_cells(centres) -> tuple[np.ndarray, list[int | None]]:
    """Column edges that centre a cell on each of ``centres`` (sorted; recorded steps are unevenly
    spaced when the last step is off the grid): cell ``i`` spans half the smaller gap to its
    neighbours on each side (half a unit for a single centre). Returns ``(edges, columns)``:
    ``columns[j]`` is the index of the centre drawn between ``edges[j]`` and ``edges[j + 1]``, or
    None for an empty strip where neighbouring gaps differ."""
    c = np.asarray(centres, dtype=float)
    gaps = np.diff(c)
    half = np.array([min(gaps[max(i - 1, 0):i + 1], default=1.0) / 2 for i in range(len(c))])
    edges, columns = [c[0] - half[0]], []
    for i, (centre, h) in enumerate(zip(c, half)):
        if edges[-1] < centre - h:
            edges.append(centre - h)
            columns.append(None)
        edges.append(centre + h)
        columns.append(i)
    return np.array(edges), columns


def variance_heatmap(table: VarianceTable, path, statistic: str = "var", title: str = "log10 weight variance"):
    """Layer x step heatmaps of log10 variance for Q, K and V; each cell centred on its recorded
    step (and layer)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for ax, name in zip(axes, QKV):
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(table[name, statistic])
        x_edges, columns = centred_cells(table.steps)
        y_edges, _ = centred_cells(table.layers)
        z = np.stack([z[:, i] if i is not None else np.full(len(table.layers), np.nan) for i in columns], axis=1)
        im = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(z), cmap="magma", shading="flat")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("layer")
        ax.set_title(f"{name.upper()} {title}")
        fig.colorbar(im, ax=ax)
    return save_figure(fig, path)


def plot_run(variance_jsonl, figures_dir) -> list[Path]:
    """All figures of a run: weight (and, when recorded, gradient) variance vs step and heatmaps."""
    records = read_records(variance_jsonl)
    table = variance_table(records)
    figures_dir = Path(figures_dir)
    paths = [variance_vs_step(table, figures_dir / "qkv_variance_vs_step.png"),
             variance_heatmap(table, figures_dir / "qkv_variance_heatmap.png")]
    if np.isfinite(table["q", "grad_var"]).any():
        paths.append(variance_vs_step(table, figures_dir / "qkv_grad_variance_vs_step.png", statistic="grad_var",
                                      title="gradient variance"))
    from .attention import attention_vs_step

    attention = attention_vs_step(records, figures_dir / "attention_vs_step.png")
    return paths + ([attention] if attention is not None else [])
