"""Every study's figures drawn from small hand-made inputs, with Figure.savefig intercepted, and
what matplotlib holds read back: each line's points, each band's edges, each cell's colour, the
axes' scales and ranges, the colour bars' layer ranges, which panel carries the legend. The
expected values are computed here (numpy, scipy) from the same hand-made numbers."""

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba


def _colorbar_range(fig, panels: int) -> tuple[float, float]:
    """The value range of the figure's one colour bar (the axes after the ``panels`` panels)."""
    (cax,) = fig.axes[panels:]
    return tuple(float(v) for v in cax.get_ylim())


# --- pretraining: variance, heatmap cells, attention, learning-rate sweep ---------------------


@pytest.mark.parametrize(
    "centres, edges, columns",
    [
        ([3], [2.5, 3.5], [0]),  # one centre: a unit-wide cell
        ([0, 1, 2], [-0.5, 0.5, 1.5, 2.5], [0, 1, 2]),
        ([0, 10, 20, 25], [-5, 5, 15, 17.5, 22.5, 27.5], [0, 1, None, 2, 3]),
        ([0, 10, 12], [-5, 5, 9, 11, 13], [0, None, 1, 2]),  # the wide gap first
        ([0, 2, 12], [-1, 1, 3, 7, 17], [0, 1, None, 2]),  # the wide gap last
    ],
)
def test_centred_cells_span_half_the_smaller_gap_each_side(centres, edges, columns):
    from hf_init.lm.plots import centred_cells

    got_edges, got_columns = centred_cells(centres)
    assert got_edges.tolist() == edges
    assert got_columns == columns
    for j, i in enumerate(got_columns):  # each drawn cell is centred on its value
        if i is not None:
            assert (got_edges[j] + got_edges[j + 1]) / 2 == centres[i]


def _variance_table(tmp_path, layers, steps, value, statistics=("var",)):
    from hf_init.core.records import make_record, read_records, write_records
    from hf_init.lm.variance import variance_table

    records = [
        make_record(step, layer, role, {s: value(step, layer, s) for s in statistics})
        for step in steps
        for layer in layers
        for role in "qkv"
    ]
    return variance_table(read_records(write_records(tmp_path / "v.jsonl", records)))


def test_variance_figure_axes_labels_and_colour_bar_range(captured, tmp_path):
    """Three log-y panels titled Q, K, V with the statistic's title, the y label on the first
    only, and a colour bar running from the first layer to the last."""
    from hf_init.lm.plots import variance_vs_step

    table = _variance_table(tmp_path, (0, 1, 2), (0, 10), lambda t, layer, s: 1.0 + t + layer)
    variance_vs_step(table, tmp_path / "g.png", statistic="var", title="weight variance")
    fig = captured[0]
    panels = fig.axes[:3]
    assert [ax.get_title() for ax in panels] == [f"{n} weight variance" for n in "QKV"]
    assert [ax.get_yscale() for ax in panels] == ["log"] * 3
    assert [ax.get_ylabel() for ax in panels] == ["population variance", "", ""]
    assert _colorbar_range(fig, 3) == (0.0, 2.0)
    for ax in panels:
        assert [line.get_ydata().tolist() for line in ax.lines] == [
            [1.0 + t + layer for t in (0, 10)] for layer in (0, 1, 2)
        ]


def test_a_run_draws_the_gradient_figure_only_when_gradients_were_recorded(tmp_path):
    from hf_init.core.records import make_record, write_records
    from hf_init.lm.plots import plot_run

    def records(grad):  # a run always writes grad_var: null where no gradient was recorded
        return [
            make_record(step, layer, role, {"var": 1.0 + step, "grad_var": grad})
            for step in (0, 5)
            for layer in (0, 1)
            for role in "qkv"
        ]

    weights_only = write_records(tmp_path / "a.jsonl", records(None))
    names = [p.name for p in plot_run(weights_only, tmp_path / "a")]
    assert names == ["qkv_variance_vs_step.png", "qkv_variance_heatmap.png"]
    with_grads = write_records(tmp_path / "b.jsonl", records(0.5))
    paths = plot_run(with_grads, tmp_path / "b")
    assert [p.name for p in paths] == [
        "qkv_variance_vs_step.png",
        "qkv_variance_heatmap.png",
        "qkv_grad_variance_vs_step.png",
    ]
    assert all(p.is_file() for p in paths)


def _attention_records(layers=(0, 1, 2), other_role=False):
    from hf_init.core.records import make_record

    out = [
        make_record(step, layer, "attn", {"logit_std": 1.0 + step + layer, "entropy": 2.0 - layer},
                    head=head)
        for step in (0, 5)
        for layer in layers
        for head in (0, 1)
    ]  # fmt: skip
    if other_role:  # the same statistic names under another role: not attention records
        out += [make_record(5, 0, "mlp", {"logit_std": 1e6, "entropy": 1e6})]
    return out


def test_attention_figure_reads_only_attention_records_and_its_axes(captured, tmp_path):
    """Only role ``attn`` records are drawn (another role's ``logit_std`` is left out), the logit
    panel is log-y and the entropy panel linear, the colour bar spans the first to the last
    layer; a run without attention records draws nothing and returns None."""
    from hf_init.core.records import read_records, write_records
    from hf_init.lm.plots import attention_vs_step, plot_run

    table = read_records(write_records(tmp_path / "a.jsonl", _attention_records(other_role=True)))
    assert attention_vs_step(table, tmp_path / "a.png") == tmp_path / "a.png"
    fig = captured[0]
    logit, entropy = fig.axes[:2]
    assert logit.get_yscale() == "log" and entropy.get_yscale() == "linear"
    assert [line.get_ydata().tolist() for line in logit.lines] == [
        [1.0 + t + layer for t in (0, 5)] for layer in (0, 1, 2)
    ]
    assert [line.get_ydata().tolist() for line in entropy.lines] == [
        [2.0 - layer] * 2 for layer in (0, 1, 2)
    ]
    assert _colorbar_range(fig, 2) == (0.0, 2.0)

    from hf_init.core.records import make_record

    no_attention = [make_record(0, 0, role, {"var": 1.0, "grad_var": None}) for role in "qkv"]
    table = read_records(write_records(tmp_path / "n.jsonl", no_attention))
    assert attention_vs_step(table, tmp_path / "n.png") is None
    assert not (tmp_path / "n.png").exists()
    both = write_records(tmp_path / "b.jsonl", no_attention + _attention_records())
    assert [p.name for p in plot_run(both, tmp_path / "figs")][-1] == "attention_vs_step.png"


def test_loss_against_learning_rate_means_seeds_and_marks_divergence(captured, tmp_path):
    """One line per group (sorted by name) of the mean capped loss over seeds at each rate, a
    cross in the line's colour at each rate where some seed diverged, the chance line, log x."""
    from hf_init.lm.plots import loss_vs_learning_rate

    results = pd.DataFrame(
        [
            ("b", 1e-3, 4.0, False), ("b", 1e-3, 5.0, False), ("b", 1e-2, 6.0, True),
            ("b", 1e-2, 7.0, False), ("a", 1e-2, 3.0, False), ("a", 1e-3, 2.0, False),
            ("a", 1e-1, 8.0, True),
        ],
        columns=["group", "lr", "capped", "diverged"],
    )  # fmt: skip
    loss_vs_learning_rate(results, tmp_path / "lr.png", chance=math.log(50))
    (ax,) = captured[0].axes
    assert ax.get_xscale() == "log"
    lines = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
    assert list(lines) == ["a", "b", f"chance ln V = {math.log(50):.2f}"]
    assert lines["a"].get_xdata().tolist() == [1e-3, 1e-2, 1e-1]
    assert lines["a"].get_ydata().tolist() == [2.0, 3.0, 8.0]
    assert lines["b"].get_xdata().tolist() == [1e-3, 1e-2]
    assert lines["b"].get_ydata().tolist() == [4.5, 6.5]
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert [(c.get_xdata().tolist(), c.get_ydata().tolist()) for c in crosses] == [
        ([1e-1], [8.0]),
        ([1e-2], [6.5]),
    ]
    assert [to_rgba(c.get_color()) for c in crosses] == [
        to_rgba(lines["a"].get_color()),
        to_rgba(lines["b"].get_color()),
    ]
    assert to_rgba(lines["a"].get_color()) != to_rgba(lines["b"].get_color())
    assert list(lines[f"chance ln V = {math.log(50):.2f}"].get_ydata()) == [math.log(50)] * 2


# --- MLP sweep: metrics, phase diagram, layer variance; comparison curves ------------------


def _sweep_rows():
    """Depths 1 and 3 at stds 0.01, 0.1, 10 (two seeds); depth 3 at std 10 diverged in both."""
    rows = []
    for depth in (1, 3):
        for std in (0.01, 0.1, 10.0):
            for seed in (0, 1):
                diverged = depth == 3 and std == 10.0
                regime = "stable" if std == 0.1 else "vanishing"
                rows.append(
                    dict(
                        depth=depth, std=std, seed=seed,
                        final_train_loss=float("nan") if diverged else 1.0 + depth + seed + std,
                        final_test_loss=float("nan") if diverged else 2.0 + depth + seed + std,
                        final_test_acc=float("nan") if diverged else 0.1 * depth + 0.05 * seed,
                        regime="diverged" if diverged else regime,
                    )
                )  # fmt: skip
    return rows


def test_sweep_metrics_colours_scales_and_bands(captured, tmp_path):
    """Depth colours along viridis 0 .. 0.85, each depth's band in its colour (none for a depth
    with no stable band), diverged bars in the regime colour, log y for the losses and 0 .. 1.02
    for the accuracy."""
    import matplotlib

    from hf_init.mlp.plots import REGIME_COLORS, band_span, sweep_metrics

    rows = _sweep_rows()
    summary = {"1": {"lo": 0.1, "hi": 0.1}, "3": {"lo": None, "hi": None}}
    sweep_metrics(rows, summary, tmp_path / "s.png")
    axes = captured[0].axes
    assert [ax.get_yscale() for ax in axes] == ["log", "log", "linear"]
    assert axes[2].get_ylim() == (0.0, 1.02)
    viridis = matplotlib.colormaps["viridis"]
    depth_colours = [viridis(0.0), viridis(0.85)]
    for ax in axes:
        curves = [line for line in ax.lines if line.get_label().startswith("depth")]
        assert [c.get_label() for c in curves] == ["depth 1", "depth 3"]
        for curve, colour in zip(curves, depth_colours):
            assert to_rgba(curve.get_color()) == pytest.approx(colour)
        (band,) = ax.patches
        assert to_rgba(band.get_facecolor())[:3] == pytest.approx(depth_colours[0][:3])
        xs = (  # a Rectangle (matplotlib >= 3.9) or a Polygon
            [band.get_x(), band.get_x() + band.get_width()]
            if hasattr(band, "get_width")
            else band.get_xy()[:, 0]
        )
        assert (min(xs), max(xs)) == pytest.approx(band_span([0.01, 0.1, 10.0], 0.1, 0.1))
        bars = [line for line in ax.lines if not line.get_label().startswith("depth")]
        assert [b.get_xdata()[0] for b in bars] == [10.0]
        assert to_rgba(bars[0].get_color())[:3] == pytest.approx(
            to_rgba(REGIME_COLORS["diverged"])[:3]
        )
    assert axes[2].get_legend() is not None
    assert axes[0].get_legend() is None and axes[1].get_legend() is None


def test_phase_diagram_colours_each_cell_by_its_majority_regime(captured, tmp_path):
    """Each cell is the regime most seeds fell in (colour from REGIME_COLORS), its text the mean
    finite accuracy at the cell's row, a cell whose accuracies are all NaN has no text, rows are
    the depths in order, the dashed line sits at log10 of the critical std and the x ticks are
    the whole decades the grid covers."""
    from hf_init.mlp.plots import REGIME_COLORS, phase_diagram

    regimes = {  # (depth, std) -> regimes over three seeds
        (2, 0.01): ["vanishing", "vanishing", "stable"],
        (2, 0.3): ["stable", "exploding", "stable"],
        (2, 30.0): ["diverged", "diverged", "exploding"],
        (5, 0.01): ["vanishing"] * 3,
        (5, 0.3): ["exploding", "exploding", "stable"],
        (5, 30.0): ["diverged"] * 3,
    }
    rows = [
        {"depth": d, "std": s, "seed": k, "regime": reg,
         "final_test_acc": float("nan") if reg == "diverged" else 0.1 * d + 0.01 * k}
        for (d, s), regs in regimes.items()
        for k, reg in enumerate(regs)
    ]  # fmt: skip
    phase_diagram(rows, 0.5, tmp_path / "p.png")
    ax = captured[0].axes[0]
    (mesh,) = ax.collections
    colours = mesh.cmap(mesh.norm(np.asarray(mesh.get_array()).reshape(2, 3)))
    want = [
        [REGIME_COLORS[max(set(regimes[d, s]), key=regimes[d, s].count)] for s in (0.01, 0.3, 30.0)]
        for d in (2, 5)
    ]
    for i in range(2):
        for j in range(3):
            assert tuple(colours[i, j]) == pytest.approx(to_rgba(want[i][j]))
    y_edges = np.asarray(mesh.get_coordinates())[:, 0, 1]
    assert y_edges.tolist() == [-0.5, 0.5, 1.5]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "5"]
    texts = {(round(t.get_position()[0], 9), t.get_position()[1]): t.get_text() for t in ax.texts}
    x_edges = np.asarray(mesh.get_coordinates())[0, :, 0]
    logs = (x_edges[1:] + x_edges[:-1]) / 2  # each text at its cell's centre
    # row 0 is depth 2: the seeds that did not diverge
    assert texts[round(logs[0], 9), 0] == f"{np.mean([0.2, 0.21, 0.22]):.2f}"
    assert texts[round(logs[2], 9), 0] == "0.22"  # only seed 2 finite
    assert texts[round(logs[1], 9), 1] == f"{np.mean([0.5, 0.51, 0.52]):.2f}"
    assert (round(logs[2], 9), 1) not in texts  # depth 5 at std 30: all diverged
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert [line.get_xdata()[0] for line in dashed] == [pytest.approx(math.log10(0.5))]
    assert list(ax.get_xticks()) == [-2, -1, 0, 1, 2]


def test_layer_variance_reads_its_depth_and_linear_layers_only(captured, tmp_path):
    """Records of another depth, another role or another statistic do not move a line; the
    stds are coloured along plasma from 0 to 0.9; the legend sits on the top-right panel, the
    x label on the bottom row; no records: no figure."""
    from hf_init.mlp.plots import layer_variance

    base = [
        dict(depth=2, role="linear", statistic=stat, std=std, step=step, layer=layer, seed=0,
             value=1.0 + layer + std + step)
        for stat in ("act_var", "grad_preact_var")
        for std in (0.1, 1.0)
        for step in (0, 10)
        for layer in range(3)
    ]  # fmt: skip
    noise = [
        dict(r, **change, value=1e9)
        for r in base
        for change in ({"depth": 4}, {"role": "embedding"}, {"statistic": "weight_var"})
    ]
    import matplotlib

    layer_variance(pd.DataFrame(base + noise), 2, tmp_path / "lv.png")
    axes = captured[0].axes[:4]
    plasma = matplotlib.colormaps["plasma"]
    for ax, step in zip(axes, (0, 10, 0, 10)):
        assert [line.get_ydata().tolist() for line in ax.lines] == [
            [1.0 + layer + std + step for layer in range(3)] for std in (0.1, 1.0)
        ]
        assert ax.get_yscale() == "log"
        for line, at in zip(ax.lines, (0.0, 0.9)):  # stds along plasma 0 .. 0.9
            assert to_rgba(line.get_color()) == pytest.approx(plasma(at))
    assert [ax.get_legend() is not None for ax in axes] == [False, True, False, False]
    assert [bool(ax.get_xlabel()) for ax in axes] == [False, False, True, True]
    assert layer_variance(pd.DataFrame(noise), 2, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_comparison_band_is_the_t_interval_over_seeds(captured, tmp_path):
    """The shaded band at each step runs from mean - t * s / sqrt(n) to mean + t * s / sqrt(n)
    (scipy's t quantile, sample std) over the seeds' train losses of that scheme and activation;
    records of another statistic are not drawn; log y, and the target line."""
    from scipy import stats

    from hf_init.mlp.plots import compare_curves

    rng = np.random.default_rng(3)
    loss = {
        (act, scheme, step): rng.uniform(0.5, 2.0, size=4)
        for act in ("relu",)
        for scheme in ("kaiming_normal", "xavier_normal")
        for step in (0, 5, 10)
    }
    rows = [
        dict(activation=act, scheme=scheme, step=step, seed=k, statistic="train_loss", value=v)
        for (act, scheme, step), values in loss.items()
        for k, v in enumerate(values)
    ] + [
        dict(activation="relu", scheme="kaiming_normal", step=5, seed=0, statistic="test_loss",
             value=1e6)
    ]  # fmt: skip
    compare_curves(pd.DataFrame(rows), 0.7, tmp_path / "c.png")
    (ax,) = captured[0].axes
    assert ax.get_yscale() == "log"
    target = [line for line in ax.lines if line.get_label().startswith("target")]
    assert list(target[0].get_ydata()) == [0.7, 0.7]
    bands = ax.collections
    assert len(bands) == 2
    t = stats.t.ppf(0.975, 3)
    for band, scheme in zip(bands, ("kaiming_normal", "xavier_normal")):
        vertices = band.get_paths()[0].vertices
        for step in (0, 5, 10):
            x = loss["relu", scheme, step]
            half = t * x.std(ddof=1) / math.sqrt(len(x))
            ys = vertices[np.isclose(vertices[:, 0], step), 1]
            assert ys.min() == pytest.approx(x.mean() - half, rel=1e-9)
            assert ys.max() == pytest.approx(x.mean() + half, rel=1e-9)


# --- theory check ------------------------------------------------------------------------------


def _mlp_rows():
    return [
        {"network": f"mlp-{act}-{mult}", "quantity": q, "activation": act, "std_multiple": mult,
         "layer": layer, "predicted": p * (1 + layer), "measured": p * (1.1 + layer),
         "measured_sem": 0.01 * p}
        for act in ("relu", "tanh", "gelu", "silu")
        for mult, p in ((0.5, 1.0), (2.0, 3.0))
        for q in ("forward", "gradient")
        for layer in (1, 2)
    ] + [{"network": "gpt2-x", "quantity": "gradient", "activation": "relu", "std_multiple": 1.0,
          "layer": 1, "predicted": 1e9, "measured": 1e9, "measured_sem": 0.0}]  # fmt: skip


def test_theory_mlp_figure_of_the_gradient_on_a_grid_of_panels(captured, tmp_path):
    """Four activations: a 2 x 3 grid with the last two axes hidden; the gradient's y label; each
    panel's lines are that activation's predictions (not another network family's), in log y."""
    from hf_init.theory.plots import plot_mlp

    plot_mlp(_mlp_rows(), "gradient", tmp_path / "g.png")
    fig = captured[0]
    assert len(fig.axes) == 6
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["relu", "tanh", "gelu", "silu"]
    assert fig.get_size_inches() == pytest.approx((3 * 4.6, 2 * 3.6))
    for ax in visible:
        assert ax.get_ylabel() == "E[(dL/dz_l)^2]" and ax.get_yscale() == "log"
        theory = [line for line in ax.lines if line.get_label().endswith("critical")]
        assert [line.get_ydata().tolist() for line in theory] == [[2.0, 3.0], [6.0, 9.0]]
        assert [line.get_label() for line in theory] == ["0.5x critical", "2.0x critical"]


def test_theory_residual_figure_per_scheme_of_one_family(captured, tmp_path):
    """One panel per scheme of the chosen family, a colour per network with its theory (solid),
    uncorrelated-token theory (dotted) and measured points; rows of another family or quantity
    are left out."""
    from hf_init.theory.plots import plot_residual

    rows = [
        {"network": f"{fam}-{scheme}-{size}", "scheme": scheme, "quantity": q, "layer": layer,
         "measured": 2.0 + layer + (fam == "gpt2"), "predicted": 1.0 + layer,
         "predicted_uncorrelated": 0.5 + layer}
        for fam in ("gpt2", "llama")
        for scheme in ("s1", "s2")
        for size in ("2x64", "4x64")
        for q in ("residual", "attn_add")
        for layer in range(3)
    ]  # fmt: skip
    plot_residual(rows, tmp_path / "r.png", family="llama")
    fig = captured[0]
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["s1", "s2"]
    assert fig._suptitle.get_text().startswith("Llama")
    for ax in visible:
        assert [line.get_label() for line in ax.lines] == [
            f"{size}: {what}"
            for size in ("2x64", "4x64")
            for what in ("theory", "theory, uncorrelated tokens", "measured")
        ]
        ys = [line.get_ydata().tolist() for line in ax.lines]
        assert ys == [[1.0, 2.0, 3.0], [0.5, 1.5, 2.5], [2.0, 3.0, 4.0]] * 2
        assert [line.get_linestyle() for line in ax.lines[:3]] == ["-", ":", "None"]
        assert ax.lines[0].get_color() == ax.lines[2].get_color() != ax.lines[3].get_color()


def test_theory_branch_figure_styles_eleven_networks_apart(captured, tmp_path):
    """Past ten networks the colours come round again and the lines turn dashed, so each line
    stays told apart; other families and quantities are left out."""
    from hf_init.theory.plots import plot_branches

    rows = [
        {"network": f"{fam}-n{i}", "quantity": q, "layer": 0, "measured": 2.0,
         "predicted": 1.0, "predicted_uncorrelated": 4.0}
        for fam in ("gpt2", "llama")
        for i in range(11)
        for q in ("attn_add", "mlp_add", "residual")
    ]  # fmt: skip
    plot_branches(rows, tmp_path / "b.png", family="llama")
    for ax in captured[0].axes:
        lines = [line for line in ax.lines if line.get_label().startswith("n")]
        assert [line.get_label() for line in lines] == [f"n{i}" for i in range(11)]
        assert [line.get_linestyle() for line in lines] == ["-"] * 10 + ["--"]
        assert lines[10].get_color() == lines[0].get_color()
        assert ax.get_yscale() == "log"


# --- coord check -------------------------------------------------------------------------------


def test_coord_check_panels_colour_steps_and_hide_the_empty_ones(captured, tmp_path):
    """Five panels on a 4-wide grid (two rows, three hidden), one line per step of the mean over
    seeds against width, coloured along viridis by step / last step, only the scheme asked for,
    the legend and y label on the first panel."""
    import matplotlib

    from hf_init.coord_check.plots import plot_scheme

    widths = [32, 64, 128]
    tables, slopes = {}, []
    for scheme in ("mine", "other"):
        for layer in range(5):
            for step in (0, 2, 4):
                seeds = np.arange(1, 3)[:, None] * (1.0 + layer + step) * np.ones(3)[None, :]
                seeds = seeds * (1e3 if scheme == "other" else 1.0)
                tables[scheme, "residual", layer, step] = pd.DataFrame(seeds, columns=widths)
                slopes.append(dict(scheme=scheme, role="residual", layer=layer, step=step,
                                   slope=0.0))  # fmt: skip
    plot_scheme(tables, "mine", slopes, tmp_path / "cc.png")
    fig = captured[0]
    assert len(fig.axes) == 8
    assert [ax.get_visible() for ax in fig.axes] == [True] * 5 + [False] * 3
    viridis = matplotlib.colormaps["viridis"]
    for layer, ax in enumerate(fig.axes[:5]):
        assert ax.get_title().startswith(f"residual {layer}\n")
        for line, step in zip(ax.lines, (0, 2, 4)):
            assert line.get_xdata().tolist() == widths
            assert line.get_ydata().tolist() == [1.5 * (1.0 + layer + step)] * 3
            assert to_rgba(line.get_color()) == pytest.approx(viridis(step / 4))
    assert fig.axes[0].get_ylabel() == "RMS" and fig.axes[1].get_ylabel() == ""
    assert fig.axes[0].get_legend() is not None and fig.axes[1].get_legend() is None


# --- the report's training-loss figure ---------------------------------------------------------


def test_report_loss_figure_one_colour_per_group_and_log_only_for_a_wide_span(
    captured, tmp_path, monkeypatch
):
    """Each run's logged loss is one line with its points; runs of one scheme (seeds apart) share
    a colour and one legend entry; a run of fewer than 3 points gets markers. The y axis is log
    only when the positive finite losses span more than 20x: a zero loss (no log) and a NaN are
    left out of that decision."""
    from hf_init import report

    curves = {
        ("xavier", 0): ([0, 10, 20], [3.0, 2.0, 1.5]),
        ("xavier", 1): ([0, 10], [3.1, 2.1]),
        ("normal", 0): ([0, 10, 20, 30], [3.0, 0.0, float("nan"), 1.0]),
    }

    def run(scheme, seed):
        return report.Run(tmp_path / f"{scheme}{seed}", {}, {"scheme": scheme, "seed": seed})

    def frame(r):
        if r.keys["scheme"] == "untracked":
            return None  # a run that logged no loss: left out
        steps, loss = curves[r.keys["scheme"], r.keys["seed"]]
        return pd.DataFrame({"step": steps, "loss": loss})

    monkeypatch.setattr(report, "train_loss_curves", frame)
    runs = [run(*k) for k in curves]
    report.loss_figure([*runs, run("untracked", 0)], tmp_path / "loss.png")
    (ax,) = captured[-1].axes
    lines = ax.get_lines()
    for line, (steps, loss) in zip(lines, curves.values()):
        np.testing.assert_array_equal(line.get_xdata(), steps)
        np.testing.assert_array_equal(line.get_ydata(), loss)
    assert [line.get_marker() for line in lines] == ["None", "o", "None"]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["scheme xavier", "scheme normal"]
    assert ax.get_yscale() == "linear"  # 3.1 / 1.0: the 0 and the NaN do not count
    curves["normal", 0] = ([0, 10], [3.0, 62.5])  # 62.5 / 1.5 > 20: a diverged run
    report.loss_figure(runs, tmp_path / "loss2.png")
    assert captured[-1].axes[0].get_yscale() == "log"
    for loss, scale in (
        ([3.0, 29.0], "linear"),  # 29 / 1.5 < 20
        ([3.0, 30.0], "linear"),  # exactly 20x: not more than 20
        ([3.0, 0.07], "log"),
    ):  # 3.1 / 0.07 > 20: a loss below 1 counts
        curves["normal", 0] = ([0, 10], loss)
        report.loss_figure(runs, tmp_path / "loss3.png")
        assert captured[-1].axes[0].get_yscale() == scale, loss  # fmt: skip
    # up to 10 groups tab10's colours in order; 11 and more: tab20's, so no two groups share one
    for n_groups, cmap in ((10, "tab10"), (11, "tab20")):
        curves.clear()
        curves.update({(f"scheme{i}", 0): ([0, 10, 20], [3.0, 2.0, 1.5]) for i in range(n_groups)})
        report.loss_figure([run(*k) for k in curves], tmp_path / f"loss{n_groups}.png")
        colors = [line.get_color() for line in captured[-1].axes[0].get_lines()]
        assert len(set(colors)) == n_groups
        groups = sorted(f"scheme scheme{i}" for i in range(n_groups))
        want = [to_rgba(c) for c in matplotlib.colormaps[cmap].colors]
        assert [to_rgba(c) for c in colors] == [
            want[groups.index(f"scheme scheme{i}")] for i in range(n_groups)
        ]
