"""The coord check's figure, one per scheme as in microsoft/mup: for every activation a panel of
its RMS against width (log-log, mean over seeds), one line per step. Flat lines: width-stable."""

from __future__ import annotations

import math
from pathlib import Path

from hf_init.coord_check.study import record_order
from hf_init.core.figures import pyplot, save_figure

COLUMNS = 4


def panel_title(role: str, layer) -> str:
    """``residual 0`` for a per-layer activation, ``output_logits`` for a whole-model one."""
    return role if layer is None else f"{role} {layer}"


def figure_path(folder: str | Path, scheme: str) -> Path:
    """``folder/coord_check_<scheme>.png`` (``normal:0.02`` -> ``normal_0.02``: no colon in a
    file name)."""
    return Path(folder) / f"coord_check_{scheme.replace(':', '_')}.png"


def log_axes(ax, widths, values: tuple[float, float]) -> None:
    """Log-log axes labelled in plain numbers, the y range around ``values`` (min, max) at least
    as many e-folds as the widths span: a line's steepness on the page shows its slope (a flat
    quantity looks flat)."""
    from matplotlib import ticker

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(widths))
    ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    low, high = (math.log(y) for y in values)
    half = max(high - low, math.log(max(widths) / min(widths))) * 0.55
    mid = (low + high) / 2
    ax.set_ylim(math.exp(mid - half), math.exp(mid + half))
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def plot_scheme(tables: dict, scheme: str, slopes: list[dict], path: str | Path) -> Path:
    """The figure of ``scheme`` from :func:`hf_init.coord_check.study.rms_tables` and the rows of
    :func:`hf_init.coord_check.study.slope_table` (each panel's title gives the slope at the
    first and last step)."""
    plt = pyplot()
    mine = {k[1:]: t for k, t in tables.items() if k[0] == scheme}  # (role, layer, step) -> table
    panels = sorted({(role, layer) for role, layer, _ in mine}, key=record_order)
    steps = sorted({step for _, _, step in mine})
    n_seeds = max(len(t) for t in mine.values())
    slope = {
        (r["role"], r["layer"], r["step"]): r["slope"] for r in slopes if r["scheme"] == scheme
    }
    rows = math.ceil(len(panels) / COLUMNS)
    fig, axes = plt.subplots(
        rows, COLUMNS, figsize=(3.6 * COLUMNS, 3.0 * rows), squeeze=False, constrained_layout=True
    )
    cmap = plt.get_cmap("viridis")
    for ax, (role, layer) in zip(axes.flat, panels):
        for step in steps:
            curve = mine[role, layer, step].mean()
            color = cmap(step / max(steps[-1], 1))
            ax.plot(curve.index, curve.to_numpy(), "o-", color=color, ms=3, label=f"step {step}")
        means = [mine[role, layer, step].mean() for step in steps]
        log_axes(ax, means[0].index, (min(m.min() for m in means), max(m.max() for m in means)))
        ax.set_title(
            f"{panel_title(role, layer)}\nslope step {steps[0]} "
            f"{slope[role, layer, steps[0]]:+.2f}, step {steps[-1]} "
            f"{slope[role, layer, steps[-1]]:+.2f}",
            fontsize=9,
        )
        ax.set_xlabel("width")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    axes.flat[0].set_ylabel("RMS")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(
        f"coord check: {scheme} (RMS against width, mean of {n_seeds} seed(s); flat = width-stable)"
    )
    return save_figure(fig, path)
