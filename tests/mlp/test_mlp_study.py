"""What the MLP studies write (hf_init/mlp/study.py through both scripts), recomputed here: the
loss records (records.jsonl) and summary.json, the HParams of the sweep's TensorBoard runs, a
successful --overwrite of each script. The runs are the session fixtures sweep_out and
compare_out (tests/conftest.py)."""

import csv
import json
import math

import numpy as np
import pytest
from conftest import run_main


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _member(r, keys):
    return tuple(str(r[k]) for k in keys)


def _curves(out):
    """The whole-model records of a study's records.jsonl (layer and role null: full-split
    loss/accuracy per record step), one dict per (member, step), through hf_init.core.records."""
    from hf_init.core.records import read_records, to_wide

    wide = to_wide(read_records(out / "records.jsonl"))
    return wide[wide["layer"].isna()].sort_values("step", kind="stable").to_dict("records")


SWEEP_KEYS = ("depth", "std", "seed")


def test_sweep_loss_records(sweep_out):
    curves, results = _curves(sweep_out), _rows(sweep_out / "results.csv")
    # 12 members x records at steps 0, 5, ..., 30 (wine: 133 train rows / batch 64 -> 3 steps per
    # epoch)
    assert len(curves) == 12 * 7
    by = {}
    for c in curves:
        by.setdefault(_member(c, SWEEP_KEYS), []).append(c)
    assert set(by) == {_member(r, SWEEP_KEYS) for r in results}
    for r in results:
        cs = by[_member(r, SWEEP_KEYS)]
        assert [int(c["step"]) for c in cs] == list(range(0, 31, 5))
        for c in cs:  # accuracies are counts over 133 train / 45 test rows
            for key, n in (("train_acc", 133), ("test_acc", 45)):
                if not math.isnan(float(c[key])):
                    assert float(c[key]) * n == pytest.approx(round(float(c[key]) * n), abs=1e-6)
        assert float(cs[0]["train_loss"]) == float(r["initial_train_loss"])
        last = float(cs[-1]["train_loss"])
        assert (math.isnan(last) and math.isnan(float(r["final_train_loss"]))) or last == float(
            r["final_train_loss"]
        )
        div = int(r["diverged_step"])
        for c in cs:  # a diverged member has no finite loss after its divergence step
            if div >= 0 and int(c["step"]) > div:
                assert math.isnan(float(c["train_loss"])), c
            else:
                assert math.isfinite(float(c["train_loss"])), c
        if float(r["std"]) == 1e-4:  # logits ~ 0 at init: the loss is ln(3)
            assert float(cs[0]["train_loss"]) == pytest.approx(math.log(3), abs=1e-5)


def test_sweep_summary_json(sweep_out):
    summary = json.loads((sweep_out / "summary.json").read_text())
    results = _rows(sweep_out / "results.csv")
    assert (
        summary["steps"] == 30 and summary["n_classes"] == 3 and summary["tensorboard_runs"] == 12
    )
    assert summary["command"].split()[:2] == ["python", "scripts/mlp_sweep.py"]
    for depth in ("1", "3"):
        band = summary["bands"][depth]
        sub = [r for r in results if r["depth"] == depth]
        for std in ("0.0001", "0.1", "50"):
            regs = [r["regime"] for r in sub if float(r["std"]) == float(std)]
            counts = {g: regs.count(g) for g in set(regs)}
            assert band["regime_counts"][std] == counts
            assert band["fraction_stable"][std] == regs.count("stable") / len(regs)


def _tb_run(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    ea = EventAccumulator(str(path))
    ea.Reload()
    content = ea.PluginTagToContent("hparams")
    start = [
        plugin_data_pb2.HParamsPluginData.FromString(v).session_start_info
        for k, v in content.items()
        if k.endswith("session_start_info")
    ]
    assert len(start) == 1
    hp = {
        k: (v.string_value if v.WhichOneof("kind") == "string_value" else v.number_value)
        for k, v in start[0].hparams.items()
    }
    metrics = {t: ea.Scalars(t)[-1].value for t in ea.Tags()["scalars"] if t.startswith("hparam/")}
    return hp, metrics, ea


def test_sweep_tensorboard_hparams(sweep_out):
    results = {_member(r, SWEEP_KEYS): r for r in _rows(sweep_out / "results.csv")}
    runs = sorted(p for p in (sweep_out / "tb").iterdir() if p.is_dir())
    assert len(runs) == 12
    seen = set()
    for run in runs:
        hp, metrics, ea = _tb_run(run)
        assert hp["width"] == 64 and hp["optimizer"] == "sgd" and hp["dataset"] == "wine"
        assert hp["lr"] == pytest.approx(0.01)
        assert run.name == f"depth{int(hp['depth'])}_std{hp['std']:.2e}_seed{int(hp['seed'])}"
        key = (str(int(hp["depth"])), f"{hp['std']:g}", str(int(hp["seed"])))
        r = next(v for k, v in results.items() if (k[0], f"{float(k[1]):g}", k[2]) == key)
        seen.add(key)
        for name in ("final_train_loss", "final_test_loss", "final_test_acc"):
            want = float(r[name])
            got = metrics[f"hparam/{name}"]
            assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, rel=1e-6), (
                run,
                name,
            )
        assert metrics["hparam/stable"] == float(r["regime"] == "stable")
        assert metrics["hparam/diverged"] == float(int(r["diverged_step"]) >= 0)
        # the minibatch-loss curve lives in the same run folder
        assert len(ea.Scalars("loss/minibatch")) == (
            30 if int(r["diverged_step"]) < 0 else int(r["diverged_step"])
        )
    assert len(seen) == 12


COMPARE_KEYS = ("activation", "scheme", "seed")


def test_compare_results_from_curves(compare_out):
    """steps_to_target and loss_auc recomputed from the loss records by their definitions."""
    summary = json.loads((compare_out / "summary.json").read_text())
    target = summary["target_loss"]
    assert target == pytest.approx(0.25 * math.log(3))
    curves = _curves(compare_out)
    results = _rows(compare_out / "results.csv")
    assert len(results) == 2 * 2 * 3
    last_step = summary["steps"]
    for r in results:
        cs = [c for c in curves if _member(c, COMPARE_KEYS) == _member(r, COMPARE_KEYS)]
        steps = np.array([int(c["step"]) for c in cs], dtype=float)
        loss = np.array([float(c["train_loss"]) for c in cs])
        assert steps[0] == 0 and steps[-1] == last_step
        hit = [s for s, v in zip(steps, loss) if v <= target]
        assert float(r["steps_to_target"]) == (hit[0] if hit else last_step + 1)
        assert (r["reached_target"] == "True") == bool(hit)
        auc = sum(
            (steps[i + 1] - steps[i]) * (loss[i] + loss[i + 1]) / 2 for i in range(len(steps) - 1)
        )
        assert float(r["loss_auc"]) == pytest.approx(auc / (steps[-1] - steps[0]), rel=1e-9)
        assert (
            float(r["initial_train_loss"]) == loss[0] and float(r["final_train_loss"]) == loss[-1]
        )


def test_compare_summary_statistics_match_scipy(compare_out):
    from scipy import stats

    summary = json.loads((compare_out / "summary.json").read_text())
    results = _rows(compare_out / "results.csv")
    assert summary["seeds"] == [0, 1, 2] and summary["min_possible_wilcoxon_p"] == 0.25
    for act in ("relu", "tanh"):
        for metric in ("steps_to_target", "loss_auc", "final_test_loss", "final_test_acc"):
            got = summary["comparison"][act][metric]
            a, b = (
                [
                    float(r[metric])
                    for r in sorted(results, key=lambda r: r["seed"])
                    if r["activation"] == act and r["scheme"] == s
                ]
                for s in ("kaiming_normal", "xavier_normal")
            )
            d = np.subtract(a, b)
            for name, x in (("a", a), ("b", b), ("diff", d)):
                x = np.asarray(x)
                assert got[name]["mean"] == pytest.approx(x.mean(), rel=1e-9, abs=1e-12)
                if x.std() > 0:
                    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
                    assert (got[name]["lo"], got[name]["hi"]) == pytest.approx(
                        (lo, hi), rel=1e-9, abs=1e-12
                    )
            lower = metric != "final_test_acc"
            assert got["a_better_count"] == sum((x < y) if lower else (x > y) for x, y in zip(a, b))
            if np.any(d != 0):
                assert got["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)
            else:
                assert math.isnan(got["wilcoxon_p"])


def test_sweep_overwrite_replaces_the_previous_study(tmp_path):
    out = tmp_path / "sweep"
    first = [
        "--dataset",
        "wine",
        "--stds",
        "0.1",
        "--seeds",
        "1",
        "--depths",
        "1",
        "2",
        "--epochs",
        "1",
        "--no_progress",
        "--output_dir",
        out,
    ]
    assert run_main("mlp_sweep", *first)[0] == 0
    assert len([p for p in (out / "tb").iterdir()]) == 2
    second = [
        "--dataset",
        "wine",
        "--stds",
        "0.05",
        "1",
        "--seeds",
        "1",
        "--depth",
        "1",
        "--epochs",
        "1",
        "--no_progress",
        "--output_dir",
        out,
    ]
    rc, _, err = run_main("mlp_sweep", *second)
    assert rc == 2 and "--overwrite" in err
    rc, _, err = run_main("mlp_sweep", *second, "--overwrite")
    assert rc == 0, err
    rows = _rows(out / "results.csv")
    assert sorted(float(r["std"]) for r in rows) == [0.05, 1.0] and {r["depth"] for r in rows} == {
        "1"
    }
    assert {float(c["std"]) for c in _curves(out)} == {0.05, 1.0}
    # the first study's TensorBoard runs are gone: only this study's members remain
    assert sorted(p.name for p in (out / "tb").iterdir()) == [
        "depth1_std1.00e+00_seed0",
        "depth1_std5.00e-02_seed0",
    ]
    assert "--overwrite" in json.loads((out / "summary.json").read_text())["command"]


def test_compare_overwrite_replaces_the_previous_study(tmp_path):
    out = tmp_path / "cmp"
    base = ["--dataset", "wine", "--epochs", "1", "--no_progress", "--output_dir", out]
    assert (
        run_main("mlp_init_compare", *base, "--seeds", "2", "--activations", "relu", "tanh")[0] == 0
    )
    rc, _, err = run_main(
        "mlp_init_compare", *base, "--seeds", "3", "--activations", "relu", "--overwrite"
    )
    assert rc == 0, err
    rows = _rows(out / "results.csv")
    assert {r["activation"] for r in rows} == {"relu"} and sorted({r["seed"] for r in rows}) == [
        "0",
        "1",
        "2",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["comparison"]) == ["relu"] and summary["seeds"] == [0, 1, 2]
    assert len([p for p in (out / "tb").iterdir() if p.is_dir()]) == 2 * 3


@pytest.mark.parametrize("study", ["sweep_out", "compare_out"])
def test_training_time_is_part_of_the_commands_time(study, request):
    """The printed "trained in A s (B s with outputs)": 0 < A <= B, and summary.json's
    train_seconds is A."""
    import re

    out = request.getfixturevalue(study)
    stdout = (out.parent / "stdout.txt").read_text()
    train, total = map(float, re.search(r"trained in ([\d.]+)s \(([\d.]+)s with", stdout).groups())
    assert 0 < train <= total
    facts = json.loads((out / "summary.json").read_text())
    seconds = next(v for k, v in _walk(facts) if k == "train_seconds")
    assert seconds == pytest.approx(train, abs=0.05)


def _walk(d):
    """(key, value) of every entry of nested dicts."""
    for k, v in d.items():
        yield k, v
        if isinstance(v, dict):
            yield from _walk(v)


def test_the_printed_band_table_leaves_out_members_that_diverged_from_step_0(capsys):
    """The sweep's printed table, per std: the regime counts, the mean test accuracy and median
    train loss of the seeds that trained (none when every seed diverged, even at step 0: nan,
    without numpy's empty-slice warning), and the median gain; recomputed from hand-made rows."""
    from hf_init.mlp.analysis import sweep_summary
    from hf_init.mlp.job import _print_bands

    def row(std, seed, diverged_step, acc, loss, gain, regime):
        return {"depth": 2, "std": std, "seed": seed, "diverged_step": diverged_step,
                "final_test_acc": acc, "final_train_loss": loss, "gain_per_layer_init": gain,
                "regime": regime}  # fmt: skip

    rows = [
        row(0.1, 0, -1, 0.8, 0.5, 1.0, "stable"),
        row(0.1, 1, -1, 0.6, 0.7, 1.2, "stable"),
        row(0.1, 2, -1, 0.7, 0.9, 1.1, "stable"),
        row(10.0, 0, 0, float("nan"), float("nan"), 50.0, "diverged"),
        row(10.0, 1, 0, float("nan"), float("nan"), 70.0, "diverged"),
    ]
    import warnings

    with warnings.catch_warnings():  # no numpy "Mean of empty slice" warning on the user's screen
        warnings.simplefilter("error", RuntimeWarning)
        _print_bands(sweep_summary(rows), rows, [2], [0.1, 10.0])
    lines = capsys.readouterr().out.splitlines()
    stable = next(line for line in lines if line.strip().startswith("1.00e-01"))
    assert stable.split()[-3:] == [f"{0.7:.3f}", f"{0.7:.3g}", f"{1.1:.3g}"]
    assert "stable 3" in stable
    exploded = next(line for line in lines if line.strip().startswith("1.00e+01"))
    assert exploded.split()[-3:] == ["nan", "nan", f"{60.0:.3g}"] and "diverged 2" in exploded
