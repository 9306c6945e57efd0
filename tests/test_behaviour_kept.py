"""The restructure changed no numbers: the default pretraining config (a few steps) and a small
default sweep, re-run now, give the records saved from main before it
(tests/fixtures/behaviour_kept, whose README has the commands and the commit). Values to float
tolerance: thread counts may differ."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

# a regression guard of the restructure, beside the suite's independent checks: -m slow runs it
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "behaviour_kept"
RTOL = 1e-4


def _close(a: float | None, b: float | None, rtol: float = RTOL) -> bool:
    if a is None or b is None:  # a statistic not recorded at that step (e.g. no gradient at step 0)
        return a is None and b is None
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= rtol * max(abs(a), abs(b)) + 1e-30


def _records(path: Path) -> dict[tuple, float | None]:
    """(step, layer, role, statistic) -> value of a variance.jsonl through the one reader, which
    reads the saved (pre-restructure, one object per (step, layer)) file and today's records
    alike; NaN (a statistic recorded as null) becomes None."""
    from hf_init.core.records import read_records

    frame = read_records(path)
    # the weight records only: attention (role attn, per head) and learning-rate records came later
    frame = frame[frame["layer"].notna() & (frame["role"] != "attn")]
    return {
        (int(r.step), int(r.layer), r.role, r.statistic): None if math.isnan(r.value) else r.value
        for r in frame.itertuples()
    }


def _run(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_pretrain_records_unchanged(tmp_path):
    out = tmp_path / "pre"
    _run(
        [
            "scripts/pretrain.py",
            "--max_steps",
            "6",
            "--variance_steps",
            "2",
            "--output_dir",
            str(out),
            "--disable_tqdm",
            "true",
        ]
    )
    expected = _records(FIXTURES / "pretrain_variance.jsonl")
    got = _records(out / "variance.jsonl")
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert _close(got[key], value), (key, got[key], value)
    assert len(expected) > 500
    info = json.loads((out / "run_info.json").read_text())
    ref = json.loads((FIXTURES / "pretrain_run.json").read_text())
    assert _close(info["eval_loss"], ref["eval_loss"]) and _close(
        info["train_loss"], ref["train_loss"]
    )


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _same_rows(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        for key, value in e.items():
            try:
                ev = float(value)
            except ValueError:
                assert g[key] == value, (key, g[key], value)
                continue
            assert _close(float(g[key]), ev), (key, g, e)


def _sweep_output(tmp_path_factory) -> Path:
    out = tmp_path_factory.getbasetemp() / "behaviour_sweep"
    if not (out / "summary.json").exists():
        _run(
            [
                "scripts/mlp_sweep.py",
                "--stds",
                "0.001",
                "0.1",
                "10",
                "--seeds",
                "2",
                "--epochs",
                "2",
                "--depth",
                "3",
                "--width",
                "32",
                "--output_dir",
                str(out),
                "--no_progress",
            ]
        )
    return out


def test_sweep_results_unchanged(tmp_path_factory):
    out = _sweep_output(tmp_path_factory)
    _same_rows(_csv(out / "results.csv"), _csv(FIXTURES / "sweep_results.csv"))


# the sweep's layer_stats.csv and curves.csv (saved before the restructure) are now records.jsonl:
# layer records (role "linear", layer 0-based) and whole-model records (layer and role null)
@pytest.mark.parametrize(
    "name,role,layer_offset", [("layer_stats.csv", "linear", 1), ("curves.csv", None, None)]
)
def test_sweep_records_unchanged(tmp_path_factory, name, role, layer_offset):
    from hf_init.core.records import read_records, to_wide

    out = _sweep_output(tmp_path_factory)
    table = read_records(out / "records.jsonl")
    table = table[table["role"] == role] if role else table[table["role"].isna()]
    wide = to_wide(table)
    expected = _csv(FIXTURES / f"sweep_{name}")
    if layer_offset is not None:
        wide["layer"] = wide["layer"] + layer_offset
    got = [
        {k: ("" if v is None else str(v)) for k, v in rec.items()}
        for rec in wide.to_dict("records")
    ]

    def order(r):
        return (
            float(r["depth"]),
            float(r["std"]),
            int(r["seed"]),
            int(r["step"]),
            int(r.get("layer") or 0),
        )

    _same_rows(sorted(got, key=order), sorted(expected, key=order))
