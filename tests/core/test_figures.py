"""One figure per study, read back: the PNG the script wrote (size, not blank), and the same
figure drawn again from the script's own output files with Figure.savefig intercepted, so the
panels and lines matplotlib holds can be counted and their data compared with numbers computed
here from results.csv and the record files (parsed with json, not hf_init.core.records); the
heatmap's cells and the sweep's stable band on hand-made data."""

import csv
import json
import math

import numpy as np
import pytest


def _png(path, width_in, height_in, dpi=120):
    """The image at ``path``: about figsize x dpi (bbox_inches="tight" trims or grows the margins)
    and not blank (enough non-white pixels, many colours)."""
    from matplotlib import image

    img = image.imread(str(path))
    h, w = img.shape[:2]
    assert 0.75 * width_in * dpi <= w <= 1.2 * width_in * dpi, (w, width_in)
    assert 0.75 * height_in * dpi <= h <= 1.3 * height_in * dpi, (h, height_in)
    rgb = img[..., :3]
    non_white = (rgb < 0.95).any(axis=-1).mean()
    assert non_white > 0.03, non_white
    assert len(np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 20
    return img


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v):
    try:
        return float(v)
    except ValueError:
        return v


# --- pretraining ---------------------------------------------------------------------------


def test_pretrain_variance_figure(pretrain_out, captured, tmp_path):
    from hf_init.lm.plots import plot_run

    _png(pretrain_out / "figures" / "qkv_variance_vs_step.png", 15, 4.2)
    records = [
        json.loads(line) for line in (pretrain_out / "variance.jsonl").read_text().splitlines()
    ]
    plot_run(pretrain_out / "variance.jsonl", tmp_path)
    fig = captured[0]
    panels = _panels(fig)
    assert [ax.get_title().split()[0] for ax in panels] == ["Q", "K", "V"]
    for ax, key in zip(panels, ("q", "k", "v")):
        assert len(ax.lines) == 2  # one per layer
        for layer, line in enumerate(ax.lines):
            mine = sorted(
                (r["step"], r["var"]) for r in records if r["layer"] == layer and r["role"] == key
            )
            assert list(line.get_xdata()) == [s for s, _ in mine] == [0, 5, 10]
            assert np.allclose(line.get_ydata(), [v for _, v in mine], rtol=1e-12)


# --- MLP sweep -----------------------------------------------------------------------------


def test_sweep_metrics_figure(sweep_out, captured, tmp_path):
    from hf_init.mlp.plots import sweep_metrics

    _png(sweep_out / "sweep_metrics.png", 15, 4.2)
    rows = [
        {k: (int(v) if k in ("depth", "seed", "diverged_step") else _num(v)) for k, v in r.items()}
        for r in _rows(sweep_out / "results.csv")
    ]
    summary = json.loads((sweep_out / "summary.json").read_text())["bands"]
    sweep_metrics(rows, summary, tmp_path / "s.png")
    axes = [ax for ax in captured[0].axes if ax.get_visible()]
    assert len(axes) == 3
    for ax, key in zip(axes, ("final_train_loss", "final_test_loss", "final_test_acc")):
        curves = [
            line for line in ax.lines if len(line.get_xdata()) > 2
        ]  # not the axvline of a diverged std
        assert len(curves) == 2  # one per depth
        for depth, line in zip((1, 3), curves):
            assert list(line.get_xdata()) == [1e-4, 0.1, 50.0]
            want = []
            for std in (1e-4, 0.1, 50.0):
                vals = [
                    r[key]
                    for r in rows
                    if r["depth"] == depth and r["std"] == std and math.isfinite(r[key])
                ]
                want.append(np.mean(vals) if vals else np.nan)
            assert np.allclose(line.get_ydata(), want, rtol=1e-12, equal_nan=True)
        # depth 3 at std 50 diverged on every seed: one red bar at 50
        bars = [
            line
            for line in ax.lines
            if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
        ]
        assert [b.get_xdata()[0] for b in bars] == [50.0]


def test_layer_variance_figure_shows_the_first_and_last_step_medians(captured, tmp_path):
    """Hand-made records at steps 0, 5, 10 (3 seeds, 2 stds, 3 layers): the four panels are
    (activation, gradient) x (step 0, step 10), never the middle step, and each line is the
    median over seeds of that std's values per layer (numpy), non-positive ones left out."""
    import pandas as pd

    from hf_init.mlp.plots import layer_variance

    rng = np.random.default_rng(0)
    rows = [
        dict(depth=2, role="linear", statistic=stat, std=std, step=step, layer=layer, seed=seed,
             value=float(rng.uniform(0.1, 10.0)))
        for stat in ("act_var", "grad_preact_var")
        for std in (0.1, 1.0)
        for step in (0, 5, 10)
        for layer in range(3)
        for seed in range(3)
    ]  # fmt: skip
    rows[0]["value"] = -1.0  # act_var, std 0.1, step 0, layer 0, seed 0: a negative "variance"
    rows[1]["value"] = rows[2]["value"] = -1.0  # so the median of that layer is negative too
    table = pd.DataFrame(rows)
    assert layer_variance(table, 2, tmp_path / "lv.png") is not None
    panels = _panels(captured[0])
    assert [ax.get_title().rsplit(", ", 1)[1] for ax in panels] == [
        "step 0", "step 10", "step 0", "step 10"
    ]  # fmt: skip
    cells = [(stat, step) for stat in ("act_var", "grad_preact_var") for step in (0, 10)]
    for ax, (stat, step) in zip(panels, cells):
        assert len(ax.lines) == 2
        for line, std in zip(ax.lines, (0.1, 1.0)):
            want = []
            for layer in range(3):
                key = (stat, std, step, layer)
                vals = [
                    r["value"]
                    for r in rows
                    if (r["statistic"], r["std"], r["step"], r["layer"]) == key
                ]
                m = float(np.median(vals))
                want.append(m if m > 0 else np.nan)
            assert list(line.get_xdata()) == [0, 1, 2]
            np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12)
    assert np.isnan(panels[0].lines[0].get_ydata()[0])  # the negative median: not drawn


# --- MLP scheme comparison -----------------------------------------------------------------


def test_compare_curves_figure(compare_out, captured, tmp_path):
    from hf_init.core.records import read_records
    from hf_init.mlp.plots import compare_curves

    _png(compare_out / "compare_curves.png", 12, 4.2)
    # the loss records, read here with json (layer and role null: whole-model statistics)
    curves = [
        r
        for r in map(json.loads, (compare_out / "records.jsonl").read_text().splitlines())
        if r["layer"] is None and r["role"] is None
    ]
    target = json.loads((compare_out / "summary.json").read_text())["target_loss"]
    compare_curves(read_records(compare_out / "records.jsonl"), target, tmp_path / "c.png")
    panels = _panels(captured[0])
    assert [ax.get_title() for ax in panels] == ["relu", "tanh"]
    assert len(captured[0].axes) == 2  # one row of panels, no empty axes beside them
    for ax in panels:
        act = ax.get_title()
        schemes = [
            line for line in ax.lines if line.get_label() in ("kaiming_normal", "xavier_normal")
        ]
        assert [line.get_label() for line in schemes] == ["kaiming_normal", "xavier_normal"]
        target_lines = [line for line in ax.lines if line.get_label().startswith("target")]
        assert len(target_lines) == 1 and target_lines[0].get_ydata()[0] == pytest.approx(target)
        for line in schemes:
            sub = [r for r in curves if r["activation"] == act and r["scheme"] == line.get_label()]
            steps = sorted({r["step"] for r in sub})
            means = [np.mean([r["train_loss"] for r in sub if r["step"] == s]) for s in steps]
            assert list(line.get_xdata()) == steps
            assert np.allclose(line.get_ydata(), means, rtol=1e-12)


# --- theory check ----------------------------------------------------------------------------


def test_theory_mlp_forward_figure(theory_out, captured, tmp_path):
    from hf_init.theory.plots import plot_mlp

    _png(theory_out / "mlp_forward.png", 2 * 4.6, 3.6)
    from hf_init.theory.check import read_check_rows

    # the records, read here with json; the figure is drawn from read_check_rows as the script does
    rows = [
        r
        for r in map(json.loads, (theory_out / "theory_check.jsonl").read_text().splitlines())
        if r["network"].startswith("mlp-")
    ]
    plot_mlp(read_check_rows(theory_out / "theory_check.jsonl"), "forward", tmp_path / "f.png")
    panels = _panels(captured[0])
    assert [ax.get_title() for ax in panels] == ["relu", "tanh"]
    for ax in panels:
        theory_lines = [
            line
            for line in ax.lines
            if line.get_linestyle() == "-"
            and line.get_marker() in ("None", "")
            and len(line.get_xdata()) == 3
        ]
        assert len(theory_lines) == 2  # one per std multiple
        for mult, line in zip(("0.7", "1.0"), theory_lines):
            sel = [
                r
                for r in rows
                if r["activation"] == ax.get_title()
                and r["quantity"] == "forward"
                and float(r["std_multiple"]) == float(mult)
            ]
            assert list(line.get_xdata()) == [1, 2, 3]
            assert np.allclose(line.get_ydata(), [float(r["predicted"]) for r in sel], rtol=1e-12)


def test_theory_branches_figure_on_hand_made_rows(captured, tmp_path):
    """plot_branches: the top row divides by the uncorrelated-token prediction, the bottom row by
    the position-covariance one, attention left and MLP right, a line per network of the family
    (other families left out), and the top-right panel carries the networks' legend."""
    from hf_init.theory.plots import plot_branches

    rows = [
        {
            "network": net,
            "quantity": q,
            "layer": layer,
            "measured": 2.0 + layer + (q == "mlp_add"),
            "predicted": 1.0 + layer,
            "predicted_uncorrelated": 4.0 + layer,
        }
        for net in ("gpt2-a", "gpt2-b", "llama-a")
        for q in ("attn_add", "mlp_add", "resid")
        for layer in range(3)
    ]
    plot_branches(rows, tmp_path / "b.png")
    axes = captured[0].axes
    assert len(axes) == 4
    for i, (key, quantity) in enumerate(
        [(k, q) for k in ("predicted_uncorrelated", "predicted") for q in ("attn_add", "mlp_add")]
    ):
        lines = [line for line in axes[i].lines if line.get_label() in ("a", "b")]
        assert [line.get_label() for line in lines] == ["a", "b"]
        want = [
            (2.0 + layer + (quantity == "mlp_add")) / (1.0 + layer + 3.0 * (key != "predicted"))
            for layer in range(3)
        ]
        for line in lines:
            assert list(line.get_xdata()) == [0, 1, 2]
            assert np.allclose(line.get_ydata(), want, rtol=1e-12)
    legend = axes[1].get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["a", "b"]
    assert all(ax.get_legend() is None for i, ax in enumerate(axes) if i != 1)


def test_heatmap_cells_are_centred_on_their_recorded_steps(tmp_path, monkeypatch):
    import numpy as np

    from hf_init.core.records import make_record, read_records, write_records
    from hf_init.lm import plots
    from hf_init.lm.variance import variance_table

    steps = [0, 10, 20, 25]  # the last step off the recording grid, as a run's final step can be
    records = [
        make_record(s, layer, role, {"var": 1.0 + s + layer})
        for s in steps
        for layer in range(3)
        for role in "qkv"
    ]
    table = variance_table(read_records(write_records(tmp_path / "v.jsonl", records)))
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    plots.variance_heatmap(table, tmp_path / "h.png")
    mesh = figures[0].axes[0].collections[0]
    xy = np.asarray(mesh.get_coordinates())  # (layers + 1, steps + 1, 2) cell corners
    x_edges, y_edges = xy[0, :, 0], xy[:, 0, 1]
    # each cell spans half the smaller gap to its neighbours on each side: 20 has neighbours 10
    # and 25, so [17.5, 22.5], and the strip 15 .. 17.5 is left empty
    assert x_edges.tolist() == [-5, 5, 15, 17.5, 22.5, 27.5]
    z = np.ma.getdata(mesh.get_array()).reshape(3, 5)
    mask = np.ma.getmaskarray(mesh.get_array()).reshape(3, 5)
    drawn = [j for j in range(5) if not mask[0, j]]
    assert [(x_edges[j] + x_edges[j + 1]) / 2 for j in drawn] == steps
    assert ((y_edges[1:] + y_edges[:-1]) / 2).tolist() == [0, 1, 2]
    assert z[2, drawn[2]] == pytest.approx(np.log10(1 + 20 + 2))  # cell (layer 2, step 20)


def test_a_one_std_stable_band_is_a_visible_strip(tmp_path, monkeypatch):
    import numpy as np
    from matplotlib.patches import Polygon, Rectangle

    from hf_init.mlp import plots

    stds = [1e-2, 1e-1, 1.0, 10.0]
    rows = [
        {
            "depth": 2,
            "std": s,
            "seed": 0,
            "final_train_loss": 1.0,
            "final_test_loss": 1.0,
            "final_test_acc": 0.5,
            "regime": "stable" if s == 1e-1 else "vanishing",
        }
        for s in stds
    ]
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    plots.sweep_metrics(rows, {"2": {"lo": 0.1, "hi": 0.1}}, tmp_path / "m.png")
    spans = [p for p in figures[0].axes[0].patches if isinstance(p, (Polygon, Rectangle))]
    assert len(spans) == 1
    xs = (
        spans[0].get_xy()[:, 0]
        if isinstance(spans[0], Polygon)
        else [spans[0].get_x(), spans[0].get_x() + spans[0].get_width()]
    )
    # out to the geometric midpoints with the neighbours: sqrt(0.01 * 0.1) .. sqrt(0.1 * 1)
    assert min(xs) == pytest.approx(np.sqrt(1e-3)) and max(xs) == pytest.approx(np.sqrt(0.1))
    # at the grid's end: half a grid step (a factor sqrt(10)) beyond the last std
    assert plots.band_span(stds, 1.0, 10.0) == pytest.approx(
        (np.sqrt(0.1 * 1.0), 10.0 * np.sqrt(10.0))
    )


def test_variance_figure_leaves_out_non_positive_points_and_colours_by_depth(captured, tmp_path):
    """Hand-made Q/K/V variance records of 2 layers at 4 steps: each panel draws one line per
    layer, without the steps whose value is 0 or NaN (a log axis), the first layer in viridis's
    first colour and the last in its last."""
    import matplotlib

    from hf_init.core.records import make_record, read_records, write_records
    from hf_init.lm.plots import variance_vs_step
    from hf_init.lm.variance import variance_table

    values = {
        0: {0: 1.0, 10: 0.0, 20: float("nan"), 30: 2.0},
        1: {0: 1.0, 10: 2.0, 20: 3.0, 30: 4.0},
    }
    records = [
        make_record(step, layer, role, {"var": v})
        for layer, row in values.items()
        for step, v in row.items()
        for role in "qkv"
    ]
    table = variance_table(read_records(write_records(tmp_path / "v.jsonl", records)))
    variance_vs_step(table, tmp_path / "v.png")
    viridis = matplotlib.colormaps["viridis"]
    panels = _panels(captured[0])
    assert len(panels) == 3
    for ax in panels:
        first, last = ax.lines
        assert first.get_xdata().tolist() == [0, 30] and first.get_ydata().tolist() == [1.0, 2.0]
        assert last.get_xdata().tolist() == [0, 10, 20, 30]
        assert first.get_color() == viridis(0.0) and last.get_color() == viridis(1.0)


@pytest.mark.parametrize(
    "stds, edges",
    [
        ((1e-3, 1e-2, 1.0), [-3.5, -2.5, -1.0, 1.0]),  # log10 -3, -2, 0: unevenly spaced
        ((1e-2, 1.0), [-3.0, -1.0, 1.0]),
        ((0.1,), [-1.5, -0.5]),  # one std: a cell one decade wide
    ],
)
def test_phase_diagram_cells_reach_halfway_to_their_neighbours_in_log_std(
    captured, tmp_path, stds, edges
):
    """The cells' inner edges are the midpoints of neighbouring log10 stds, the outer cells
    reach out by half their one neighbour's distance (half a decade with no neighbour), and each
    cell's accuracy text sits at its cell's centre."""
    from hf_init.mlp.plots import phase_diagram

    rows = [
        {"depth": d, "std": std, "seed": 0, "regime": "stable", "final_test_acc": 0.5}
        for d in (2, 4)
        for std in stds
    ]
    phase_diagram(rows, 0.1, tmp_path / "p.png")
    (ax,) = captured[0].axes[:1]
    (mesh,) = ax.collections
    np.testing.assert_allclose(mesh.get_coordinates()[0, :, 0], edges)
    centres = sorted({round(t.get_position()[0], 12) for t in ax.texts})
    np.testing.assert_allclose(centres, (np.array(edges[:-1]) + edges[1:]) / 2)


def test_sweep_metric_panels_show_every_point_they_draw(sweep_out, captured, tmp_path):
    """Each panel's y range holds all the finite values it plots (the accuracy panel 0 to 1)."""
    from hf_init.mlp.plots import sweep_metrics

    rows = [
        {k: (int(v) if k in ("depth", "seed", "diverged_step") else _num(v)) for k, v in r.items()}
        for r in _rows(sweep_out / "results.csv")
    ]
    summary = json.loads((sweep_out / "summary.json").read_text())["bands"]
    sweep_metrics(rows, summary, tmp_path / "s.png")
    for ax in [ax for ax in captured[0].axes if ax.get_visible()]:
        ys = np.concatenate([line.get_ydata() for line in ax.lines if len(line.get_xdata()) > 2])
        ys = ys[np.isfinite(ys)]
        low, high = ax.get_ylim()
        assert low <= ys.min() and ys.max() <= high, (ax.get_ylabel(), low, high)


def test_a_one_scheme_residual_figure_has_one_panel(captured, tmp_path):
    """The theory check's residual figure with one scheme: one panel, no hidden one beside it
    (an empty half of the figure)."""
    from hf_init.theory.plots import plot_residual

    rows = [
        {"network": "gpt2-2x64", "scheme": "gpt2", "quantity": "residual", "layer": layer,
         "measured": 1.0 + layer, "predicted": 1.0 + layer, "predicted_uncorrelated": 1.0}
        for layer in range(3)
    ]  # fmt: skip
    plot_residual(rows, tmp_path / "r.png")
    assert len(captured[0].axes) == 1


def test_attention_figure_means_heads_and_colours_by_depth(captured, tmp_path):
    """Hand-made attention records of 3 layers x 2 heads at 3 steps: each panel draws one line
    per layer of the mean over heads (logit std, entropy), coloured by depth along viridis: the
    first layer its first colour, the middle one its middle, the deepest its last."""
    import matplotlib

    from hf_init.core.records import make_record, read_records, write_records
    from hf_init.lm.plots import attention_vs_step

    def value(step, layer, head, stat):
        return (1 + step + 10 * layer + head) * (1.0 if stat == "logit_std" else 0.1)

    records = [
        make_record(step, layer, "attn", {stat: value(step, layer, head, stat)}, head=head)
        for step in (0, 5, 10)
        for layer in (0, 1, 2)
        for head in (0, 1)
        for stat in ("logit_std", "entropy")
    ]
    table = read_records(write_records(tmp_path / "a.jsonl", records))
    attention_vs_step(table, tmp_path / "a.png")
    viridis = matplotlib.colormaps["viridis"]
    panels = _panels(captured[0])  # and a colour bar for the layers
    assert len(panels) == 2
    for ax, stat in zip(panels, ("logit_std", "entropy")):
        assert len(ax.lines) == 3
        for line, layer in zip(ax.lines, (0, 1, 2)):
            assert line.get_xdata().tolist() == [0, 5, 10]
            want = [(value(t, layer, 0, stat) + value(t, layer, 1, stat)) / 2 for t in (0, 5, 10)]
            np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12)
            assert line.get_color() == viridis(layer / 2)
