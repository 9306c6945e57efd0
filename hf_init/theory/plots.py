"""Figures for the theory check: predicted line vs measured points per layer (log scale).

Input: the theory check's records as one dict per (network, quantity, layer)
(:func:`hf_init.theory.check.read_check_rows`, through the one record reader).
Output: PNG files.
"""

from __future__ import annotations

from pathlib import Path

from hf_init.core.figures import pyplot, save_figure


def _panel_grid(n: int):
    plt = pyplot()
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _networks(rows: list[dict], key: str, value) -> list[tuple[str, list[dict], list[int]]]:
    """(network name, its rows, their layers) for each network among the rows whose ``key`` is
    ``value``, in order of first appearance."""
    nets = dict.fromkeys(r["network"] for r in rows if r[key] == value)
    out = []
    for net in nets:
        sel = [r for r in rows if r["network"] == net]
        out.append((net, sel, [r["layer"] for r in sel]))
    return out


def plot_mlp(rows: list[dict], quantity: str, path: str | Path) -> Path:
    """One panel per activation; per std multiple a predicted line and measured points
    (seed mean +- 1 s.e.m.), log y. ``quantity``: "forward" or "gradient"."""
    rs = [r for r in rows if r["network"].startswith("mlp-") and r["quantity"] == quantity]
    acts = list(dict.fromkeys(r["activation"] for r in rs))
    fig, axes = _panel_grid(max(len(acts), 1))
    for ax, act in zip(axes, acts):
        for i, (_, sel, x) in enumerate(_networks(rs, "activation", act)):
            color = f"C{i}"
            ax.plot(
                x,
                [r["predicted"] for r in sel],
                "-",
                color=color,
                label=f"{sel[0]['std_multiple']}x critical",
            )
            ax.errorbar(
                x,
                [r["measured"] for r in sel],
                yerr=[r["measured_sem"] for r in sel],
                fmt="o",
                color=color,
                ms=4,
                capsize=2,
            )
        ax.set_yscale("log")
        ax.set_title(act)
        ax.set_xlabel("layer l")
        ax.set_ylabel("E[z_l^2]" if quantity == "forward" else "E[(dL/dz_l)^2]")
        ax.legend(fontsize=7, title="line: theory, dots: measured", title_fontsize=7)
    fig.suptitle(
        f"MLP at init: {'pre-activation' if quantity == 'forward' else 'gradient'} variance per "
        "layer"
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return save_figure(fig, path)


FAMILY_TITLES = {"gpt2": "GPT-2", "llama": "Llama"}


def plot_residual(rows: list[dict], path: str | Path, family: str = "gpt2") -> Path:
    """One panel per scheme: residual-stream second moment per block of the ``family``'s
    networks (``gpt2``, ``llama``), measured (points) vs predicted with the covariance across
    positions (solid) and for uncorrelated tokens (dotted); GPT-2 with and without the
    1/sqrt(2 n_layer) residual scaling."""
    rs = [r for r in rows if r["network"].startswith(f"{family}-") and r["quantity"] == "residual"]
    schemes = list(dict.fromkeys(r["scheme"] for r in rs))
    fig, axes = _panel_grid(max(len(schemes), 1))
    for ax, scheme in zip(axes, schemes):
        for i, (net, sel, x) in enumerate(_networks(rs, "scheme", scheme)):
            label = net.rsplit("-", 1)[1]
            ax.plot(x, [r["predicted"] for r in sel], "-", color=f"C{i}", label=f"{label}: theory")
            ax.plot(
                x,
                [r["predicted_uncorrelated"] for r in sel],
                ":",
                color=f"C{i}",
                label=f"{label}: theory, uncorrelated tokens",
            )
            ax.plot(
                x,
                [r["measured"] for r in sel],
                "o",
                color=f"C{i}",
                ms=4,
                label=f"{label}: measured",
            )
        ax.set_yscale("log")
        ax.set_title(scheme)
        ax.set_xlabel("block (0 = embeddings)")
        ax.set_ylabel("residual E[h^2]")
        ax.legend(fontsize=7)
    fig.suptitle(f"{FAMILY_TITLES[family]} at init: residual-stream variance growth")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return save_figure(fig, path)


def plot_branches(rows: list[dict], path: str | Path, family: str = "gpt2") -> Path:
    """measured / predicted for what each block's attention and MLP add, per network of the
    ``family``, for both predictions (rows): where the uncorrelated-token approximation parts
    from the model."""
    rs = [
        r
        for r in rows
        if r["network"].startswith(f"{family}-") and r["quantity"] in ("attn_add", "mlp_add")
    ]
    nets = list(dict.fromkeys(r["network"] for r in rs))
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), squeeze=False)
    for row, (key, theory) in enumerate(
        (("predicted_uncorrelated", "uncorrelated tokens"), ("predicted", "position covariance"))
    ):
        for ax, quantity in zip(axes[row], ("attn_add", "mlp_add")):
            for i, net in enumerate(nets):
                sel = [r for r in rs if r["network"] == net and r["quantity"] == quantity]
                ax.plot(
                    [r["layer"] for r in sel],
                    [r["measured"] / r[key] for r in sel],
                    marker="o",
                    color=f"C{i % 10}",
                    ls="-" if i < 10 else "--",
                    ms=3,
                    label=net.removeprefix(f"{family}-"),
                )
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_yscale("log")
            ax.set_xlabel("block")
            ax.set_ylabel("measured / predicted")
            ax.set_title(
                f"{'attention' if quantity == 'attn_add' else 'MLP'} branch; theory: {theory}"
            )
    axes[0][1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)
