"""Attention behaviour of a pretraining run (records of role ``attn`` from
:mod:`hf_init.attention`): logit std and entropy against step, one line per layer (mean over
heads), next to the Q/K variance figures."""

from __future__ import annotations

import numpy as np

from . import pyplot, save_figure


def attention_frame(table):
    """Per (step, layer): the mean over heads of ``logit_std`` and ``entropy`` from a long record
    table (``hf_init.records.read_records``); empty when the run has no attention records."""
    sel = table[(table["role"] == "attn") & table["statistic"].isin(["logit_std", "entropy"])]
    if sel.empty:
        return sel
    return (sel.groupby(["step", "layer", "statistic"])["value"].mean().unstack("statistic").reset_index()
            .astype({"step": "int64", "layer": "int64"}))


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
    for stat, ax, label in (("logit_std", axes[0], "attention logit std (q.k/sqrt(d_head))"),
                            ("entropy", axes[1], "mean attention entropy (nats)")):
        for i, layer in enumerate(layers):
            sub = frame[frame["layer"] == layer].sort_values("step")
            ok = np.isfinite(sub[stat].to_numpy())
            ax.plot(sub["step"].to_numpy()[ok], sub[stat].to_numpy()[ok], color=cmap(i / max(1, len(layers) - 1)),
                    lw=1.3)
        ax.set_xlabel("optimizer step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(layers[0], layers[-1]))
    fig.colorbar(sm, ax=axes, label="layer (shallow -> deep), mean over heads")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
