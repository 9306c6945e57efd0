"""Figures of a pretraining run's per-layer variance records (``variance.jsonl`` in, through
``hf_init.core.records.read_records``; PNG out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from hf_init.core.figures import pyplot, save_figure
from hf_init.core.records import read_records
from hf_init.lm.families import QKV
from hf_init.lm.variance import VarianceTable, variance_table


def variance_vs_step(
    table: VarianceTable, path, statistic: str = "var", title: str = "weight variance"
):
    """Q, K, V variance against step, one line per layer, coloured shallow (dark) to deep
    (yellow) with viridis; log y axis."""
    plt = pyplot()
    n = len(table.layers)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True, constrained_layout=True)
    for ax, name in zip(axes, QKV):
        values = table[name, statistic]
        for i in range(n):
            ok = np.isfinite(values[i]) & (values[i] > 0)
            ax.plot(table.steps[ok], values[i][ok], color=cmap(i / max(1, n - 1)), lw=1.3)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{name.upper()} {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("population variance")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(table.layers[0], table.layers[-1]))
    fig.colorbar(sm, ax=axes, label="layer (shallow -> deep)", ticks=MaxNLocator(integer=True))
    return save_figure(fig, path)


def centred_cells(centres) -> tuple[np.ndarray, list[int | None]]:
    """Column edges that centre a cell on each of ``centres`` (sorted; recorded steps are unevenly
    spaced when the last step is off the grid): cell ``i`` spans half the smaller gap to its
    neighbours on each side (half a unit for a single centre). Returns ``(edges, columns)``:
    ``columns[j]`` is the index of the centre drawn between ``edges[j]`` and ``edges[j + 1]``, or
    None for an empty strip where neighbouring gaps differ."""
    c = np.asarray(centres, dtype=float)
    gaps = np.diff(c)
    half = np.array([min(gaps[max(i - 1, 0) : i + 1], default=1.0) / 2 for i in range(len(c))])
    edges, columns = [c[0] - half[0]], []
    for i, (centre, h) in enumerate(zip(c, half)):
        if edges[-1] < centre - h:
            edges.append(centre - h)
            columns.append(None)
        edges.append(centre + h)
        columns.append(i)
    return np.array(edges), columns


def variance_heatmap(
    table: VarianceTable, path, statistic: str = "var", title: str = "log10 weight variance"
):
    """Layer x step heatmaps of log10 variance for Q, K and V; each cell centred on its recorded
    step (and layer)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for ax, name in zip(axes, QKV):
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(table[name, statistic])
        x_edges, columns = centred_cells(table.steps)
        y_edges, _ = centred_cells(table.layers)
        z = np.stack(
            [z[:, i] if i is not None else np.full(len(table.layers), np.nan) for i in columns],
            axis=1,
        )
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
    paths = [
        variance_vs_step(table, figures_dir / "qkv_variance_vs_step.png"),
        variance_heatmap(table, figures_dir / "qkv_variance_heatmap.png"),
    ]
    if np.isfinite(table["q", "grad_var"]).any():
        paths.append(
            variance_vs_step(
                table,
                figures_dir / "qkv_grad_variance_vs_step.png",
                statistic="grad_var",
                title="gradient variance",
            )
        )

    attention = attention_vs_step(records, figures_dir / "attention_vs_step.png")
    return paths + ([attention] if attention is not None else [])


def attention_frame(table):
    """Per (step, layer): the mean over heads of ``logit_std`` and ``entropy`` from a long record
    table (``hf_init.core.records.read_records``); empty when the run has no attention records."""
    sel = table[(table["role"] == "attn") & table["statistic"].isin(["logit_std", "entropy"])]
    if sel.empty:
        return sel
    return (
        sel.groupby(["step", "layer", "statistic"])["value"]
        .mean()
        .unstack("statistic")
        .reset_index()
        .astype({"step": "int64", "layer": "int64"})
    )


def attention_vs_step(table, path, title: str = ""):
    """Two panels: attention logit std (log y) and mean entropy (nats) vs step, one line per
    layer coloured shallow (dark) to deep (yellow). Returns the path, or None without records."""
    frame = attention_frame(table)
    if frame.empty:
        return None
    plt = pyplot()
    layers = sorted(frame["layer"].unique())
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for stat, ax, label in (
        ("logit_std", axes[0], "attention logit std (q.k/sqrt(d_head))"),
        ("entropy", axes[1], "mean attention entropy (nats)"),
    ):
        for i, layer in enumerate(layers):
            sub = frame[frame["layer"] == layer].sort_values("step")
            ok = np.isfinite(sub[stat].to_numpy())
            ax.plot(
                sub["step"].to_numpy()[ok],
                sub[stat].to_numpy()[ok],
                color=cmap(i / max(1, len(layers) - 1)),
                lw=1.3,
            )
        ax.set_xlabel("optimizer step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].ticklabel_format(axis="y", useOffset=False)  # an offset label collides with titles
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(layers[0], layers[-1]))
    label = "layer (shallow -> deep), mean over heads"
    fig.colorbar(sm, ax=axes, label=label, ticks=MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def loss_vs_learning_rate(results, path, chance: float):
    """Final loss against learning rate (log x), one line per run group (mean over seeds of the
    loss capped at ``chance``, the uniform prediction's; a cross marks a run group that diverged
    at that rate in some seed), the dotted line at ``chance``. ``results``: columns ``group``
    (label), ``lr``, ``capped``, ``diverged``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for i, (label, sub) in enumerate(results.groupby("group", sort=True)):
        by_lr = sub.groupby("lr", sort=True).agg(loss=("capped", "mean"), div=("diverged", "any"))
        color = f"C{i % 10}"
        ax.plot(by_lr.index, by_lr["loss"], "o-", color=color, label=label)
        bad = by_lr[by_lr["div"]]
        ax.plot(bad.index, bad["loss"], "x", color=color, ms=11, mew=2)
    ax.axhline(chance, color="0.4", ls=":", lw=1, label=f"chance ln V = {chance:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final eval loss (capped at chance)")
    ax.set_title("final loss against learning rate (x: diverged)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
