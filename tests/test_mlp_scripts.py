"""The two MLP scripts end to end on a tiny budget, and their bad-input paths."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from hf_init.cli import fail_cleanly
from hf_init.records import read_records

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(name, argv):
    mod = _script(name)
    return fail_cleanly(lambda: mod.main(argv))


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_sweep_end_to_end_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["--dataset", "wine", "--stds", "1e-3", "0.2", "50", "--seeds", "2", "--depths", "1", "3",
            "--epochs", "3", "--record_every", "2", "--output_dir", str(out), "--no_progress"]
    assert _run("mlp_sweep", argv) == 0
    rows = _rows(out / "results.csv")
    assert len(rows) == 3 * 2 * 2
    assert {r["regime"] for r in rows} <= {"vanishing", "stable", "exploding", "diverged"}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["bands"]) == {"1", "3"}
    for fig in ("sweep_metrics.png", "layer_variance.png", "phase_diagram.png"):
        assert (out / fig).stat().st_size > 1000
    layer = read_records(out / "records.jsonl").query("role == 'linear' and statistic == 'act_var'")
    # wine: 133 training rows / batch 64 = 3 steps per epoch, 9 steps; records at 0, 2, 4, 6, 8, 9;
    # depth 1 has 2 linear layers, depth 3 has 4
    assert len(layer) == 3 * 2 * 6 * (2 + 4)
    assert summary["steps"] == 9
    runs = [p for p in (out / "tb").iterdir() if p.is_dir()]
    assert len(runs) == 12 and all(list(p.glob("events.out.tfevents.*")) for p in runs)
    before = (out / "results.csv").read_bytes()
    capsys.readouterr()
    assert _run("mlp_sweep", argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds summary.json, results.csv" in err[0] and "--overwrite" in err[0]
    assert (out / "results.csv").read_bytes() == before


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "cifar"], "unknown dataset"),
    (["--stds"], "--stds: expected at least one argument"),
    (["--stds", "1e-2", "-1"], "--stds must be a finite number > 0, got '-1'"),
    (["--stds", "abc"], "--stds must be a finite number > 0, got 'abc'"),
    (["--depth", "0"], "depth must be >= 1"),
    (["--depths", "2", "0"], "depth must be >= 1"),
    (["--optimizer", "rmsprop"], "unknown optimizer"),
])
def test_sweep_bad_input_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "o"
    assert _run("mlp_sweep", argv + ["--output_dir", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_compare_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["--dataset", "wine", "--seeds", "3", "--epochs", "4", "--activations", "relu", "--output_dir", str(out),
            "--no_progress"]
    assert _run("mlp_init_compare", argv) == 0
    printed = capsys.readouterr().out
    assert "converges faster than xavier_normal under relu" in printed
    assert "smallest two-sided Wilcoxon p possible with 3 seeds: 0.25" in printed
    rows = _rows(out / "results.csv")
    assert sorted((r["scheme"], r["seed"]) for r in rows) == sorted(
        (s, str(i)) for s in ("kaiming_normal", "xavier_normal") for i in range(3))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["comparison"]["relu"]["verdict"].split(":")[0] in ("supported", "contradicted", "not supported")
    assert (out / "compare_curves.png").stat().st_size > 1000


@pytest.mark.parametrize("argv,message", [
    (["--schemes", "kaiming_normal", "nope"], "unknown init scheme 'nope'"),
    (["--schemes", "kaiming_uniform", "xavier_normal"], "draws uniform weights"),
    (["--depth", "0"], "depth must be >= 1"),
    (["--dataset", "mnist"], "--dataset digits"),
])
def test_compare_bad_input_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "o"
    assert _run("mlp_init_compare", argv + ["--output_dir", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


@pytest.mark.parametrize("name", ["mlp_sweep", "mlp_init_compare"])
def test_bad_yaml_key_one_line_exit_2_nothing_written(tmp_path, capsys, name):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: wine\nstd: 0.1\n")
    out = tmp_path / "o"
    assert _run(name, [str(cfg), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key(s)" in err[0] and "std" in err[0]
    assert not out.exists()


def test_sweep_runs_from_the_shipped_config_with_overrides(tmp_path):
    out = tmp_path / "s"
    argv = [str(ROOT / "configs" / "mlp_sweep.yaml"), "--dataset", "wine", "--stds", "0.1", "--seeds", "1",
            "--epochs", "1", "--depth", "2", "--activation", "gelu", "--output_dir", str(out), "--no_progress"]
    assert _run("mlp_sweep", argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "wine" and summary["activation"] == "gelu" and summary["stds"] == [0.1]
    assert summary["width"] == 64  # from the YAML (the script's default)
