"""Figures of the MLP studies (rows of results.csv, or the records.jsonl table of
:func:`hf_init.core.records.read_records`, in; PNG out)."""

from __future__ import annotations

import math

import numpy as np

from hf_init.core.figures import pyplot, save_figure

REGIME_COLORS = {
    "vanishing": "#4c72b0",
    "stable": "#55a868",
    "exploding": "#dd8452",
    "diverged": "#c44e52",
}


def _nanmean(values):
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def band_span(stds, lo: float, hi: float) -> tuple[float, float]:
    """The shaded x range of a stable band ``lo .. hi`` on the log-spaced grid ``stds``: out to the
    geometric midpoints with the neighbouring stds (half a grid step past the grid's ends), so that
    a band of one std is a visible strip, not a zero-width span."""
    s = np.log(np.asarray(sorted(stds), dtype=float))
    i, j = int(np.argmin(abs(s - np.log(lo)))), int(np.argmin(abs(s - np.log(hi))))
    step = float(np.diff(s).min()) if len(s) > 1 else np.log(2.0)
    left = (s[i - 1] + s[i]) / 2 if i > 0 else s[i] - step / 2
    right = (s[j] + s[j + 1]) / 2 if j + 1 < len(s) else s[j] + step / 2
    return float(np.exp(left)), float(np.exp(right))


def sweep_metrics(rows: list[dict], summary: dict, path, title: str = ""):
    """Final train loss, test loss and test accuracy vs std (log x), mean over the seeds that
    did not diverge, one line per depth; each depth's stable band shaded in its color."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    depths = sorted({r["depth"] for r in rows})
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(depths)))
    for depth, color in zip(depths, colors):
        sub = [r for r in rows if r["depth"] == depth]
        stds = sorted({r["std"] for r in sub})
        for ax, key in zip(axes, ("final_train_loss", "final_test_loss", "final_test_acc")):
            ys = [_nanmean([r[key] for r in sub if r["std"] == s]) for s in stds]
            ax.plot(stds, ys, "o-", color=color, label=f"depth {depth}", ms=4)
            div = [s for s in stds if all(r["regime"] == "diverged" for r in sub if r["std"] == s)]
            for s in div:
                ax.axvline(s, color=REGIME_COLORS["diverged"], alpha=0.15, lw=3)
        band = summary.get(str(depth), {})
        if band.get("lo") is not None:
            lo, hi = band_span(stds, band["lo"], band["hi"])
            for ax in axes:
                ax.axvspan(lo, hi, color=color, alpha=0.12)
    for ax, lab in zip(axes, ("final train loss", "final test loss", "final test accuracy")):
        ax.set_xscale("log")
        ax.set_xlabel("initial weight std")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].set_ylim(0, 1.02)
    axes[2].legend(fontsize=8)
    fig.suptitle(
        title + "\nshaded: stable band (majority of seeds stable); red bars: every seed diverged",
        fontsize=9,
    )
    return save_figure(fig, path)


def layer_variance(table, depth: int, path, title: str = ""):
    """Activation variance (forward) and dLoss/d(pre-activation) variance (backward) vs layer,
    at init and at the end, one line per std (median over seeds), for one depth. ``table``: the
    sweep's records as read by :func:`hf_init.core.records.read_records`."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    sub = table[
        (table["depth"] == depth)
        & (table["role"] == "linear")
        & table["statistic"].isin(["act_var", "grad_preact_var"])
    ]
    if sub.empty:
        return None
    # median over seeds per (statistic, std, step, layer); diverged members are NaN and skipped
    med = sub.groupby(["statistic", "std", "step", "layer"])["value"].median()
    steps = sorted(sub["step"].unique())
    first, last = steps[0], steps[-1]
    stds = sorted(sub["std"].unique())
    cmap = plt.cm.plasma(np.linspace(0, 0.9, len(stds)))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    for (i, key), (j, step) in [
        ((i, k), (j, s))
        for i, k in enumerate(("act_var", "grad_preact_var"))
        for j, s in enumerate((first, last))
    ]:
        ax = axes[i, j]
        for s, color in zip(stds, cmap):
            line = med.loc[(key, s, step)].sort_index()
            ys = [y if (math.isfinite(y) and y > 0) else np.nan for y in line.to_numpy(dtype=float)]
            ax.plot(line.index.to_numpy(dtype=int), ys, "o-", color=color, ms=3, label=f"{s:.1e}")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(
            f"{'activation' if key == 'act_var' else 'dLoss/d(pre-activation)'} variance, step "
            f"{step}",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
        if i == 1:
            ax.set_xlabel("layer (0 = first hidden, last = logits)")
    axes[0, 1].legend(fontsize=6, ncol=2, title="std", title_fontsize=7)
    fig.suptitle(
        f"{title}\ndepth {depth}: population variance over (probe examples, units), median over "
        "seeds; diverged members omitted",
        fontsize=9,
    )
    return save_figure(fig, path)


def phase_diagram(rows: list[dict], critical_std: float, path, title: str = ""):
    """Depth x std grid colored by the majority regime over seeds; each cell shows the mean
    final test accuracy; vertical line: the theoretical critical std of the hidden layers."""
    plt = pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    depths = sorted({r["depth"] for r in rows})
    stds = sorted({r["std"] for r in rows})
    names = list(REGIME_COLORS)
    grid = np.zeros((len(depths), len(stds)))
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(stds)), 1.0 + 0.6 * len(depths)))
    logs = np.log10(stds)
    edges = np.concatenate(
        [
            [logs[0] - (logs[1] - logs[0]) / 2 if len(logs) > 1 else logs[0] - 0.5],
            (logs[1:] + logs[:-1]) / 2,
            [logs[-1] + (logs[-1] - logs[-2]) / 2 if len(logs) > 1 else logs[0] + 0.5],
        ]
    )
    for i, d in enumerate(depths):
        for j, s in enumerate(stds):
            regs = [r["regime"] for r in rows if r["depth"] == d and r["std"] == s]
            grid[i, j] = names.index(max(names, key=regs.count))
            acc = _nanmean([r["final_test_acc"] for r in rows if r["depth"] == d and r["std"] == s])
            if math.isfinite(acc):
                ax.text(
                    (edges[j] + edges[j + 1]) / 2,
                    i,
                    f"{acc:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                )
    ax.pcolormesh(
        edges,
        np.arange(len(depths) + 1) - 0.5,
        grid,
        cmap=ListedColormap(list(REGIME_COLORS.values())),
        vmin=-0.5,
        vmax=len(names) - 0.5,
    )
    ax.axvline(math.log10(critical_std), color="k", ls="--", lw=1.5)
    ax.set_yticks(range(len(depths)), [str(d) for d in depths])
    ticks = range(math.floor(logs[0]), math.ceil(logs[-1]) + 1)
    ax.set_xticks(list(ticks), [f"1e{t}" for t in ticks])
    ax.set_xlabel("initial weight std")
    ax.set_ylabel("depth (hidden layers)")
    handles = [Patch(color=c, label=n) for n, c in REGIME_COLORS.items()]
    handles.append(
        plt.Line2D(
            [], [], color="k", ls="--", label=f"critical std, hidden layers = {critical_std:.3g}"
        )
    )
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(
        f"{title}\nmajority regime over seeds; numbers: mean final test accuracy", fontsize=9
    )
    return save_figure(fig, path)


def compare_curves(table, target_loss: float, path, title: str = ""):
    """Mean full-train loss vs step per scheme with a 95% t-band over seeds, one panel per
    activation. ``table``: the comparison's records as
    :func:`~hf_init.core.records.read_records` reads them."""
    from hf_init.mlp.analysis import mean_ci

    plt = pyplot()
    loss = table[table["statistic"] == "train_loss"]
    acts = sorted(loss["activation"].unique())
    fig, axes = plt.subplots(1, len(acts), figsize=(6 * len(acts), 4.2), squeeze=False)
    for ax, act in zip(axes[0], acts):
        for scheme in sorted(loss["scheme"].unique()):
            sub = loss[(loss["activation"] == act) & (loss["scheme"] == scheme)]
            steps = sorted(sub["step"].unique())
            cis = [mean_ci(sub.loc[sub["step"] == s, "value"].to_numpy()) for s in steps]
            (line,) = ax.plot(steps, [c.mean for c in cis], label=scheme)
            ax.fill_between(
                steps, [c.lo for c in cis], [c.hi for c in cis], color=line.get_color(), alpha=0.2
            )
        ax.axhline(target_loss, color="gray", ls=":", lw=1, label=f"target {target_loss:.3g}")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("full train-set loss")
        ax.set_title(act, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}\nmean over seeds, band: 95% t-interval", fontsize=9)
    return save_figure(fig, path)
