"""The init-scheme study (hf_init/lm/study.py, the session fixture ``study`` of tests/conftest.py:
a tiny 2 schemes x 2 seeds study): the runs share tokenizer and seeds, the schemes' initial
variances are the hand formulas, a re-run skips finished runs, bad input is one line."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import STUDY_RUNS as RUNS
from conftest import STUDY_SCHEMES as SCHEMES
from conftest import STUDY_TINY as TINY
from conftest import study_script as script

from hf_init.core.cli import UsageError
from hf_init.core.records import read_records, to_wide


def test_every_run_in_its_folder_sharing_tokenizer_and_seeds(study):
    assert sorted(p.name for p in study.iterdir() if (p / "run_info.json").exists()) == RUNS
    shared = (study / "tokenizer" / "tokenizer.json").read_text()
    for name in RUNS:
        info = json.loads((study / name / "run_info.json").read_text())
        assert (
            study / name / "tokenizer.json"
        ).read_text() == shared  # trained once, loaded by every run
        assert info["seed"] == int(name[-1])
        assert info["optimizer_steps"] == 6  # the passed-through --max_steps reached every run
        assert info["config"]["data"]["tokenizer_name"] == str(study / "tokenizer")
        # an HParams entry in the run's own TensorBoard folder
        events = b"".join(
            p.read_bytes() for p in (study / name / "runs").rglob("events.out.tfevents.*")
        )
        assert b"hparams" in events
        assert (b"normal" if "normal" in name else b"gpt2") in events


def test_schemes_start_from_their_hand_formula_variances(study):
    # normal:0.05 is N(0, 0.05^2) for every weight, residual projections included; gpt2 scales
    # those by 1/sqrt(2 n_layer) (n_layer = 3). Population variance over 32 x 32 = 1024 entries:
    # within 15%.
    for name, proj_std in (("normal_std0.05_seed0", 0.05), ("gpt2_seed0", 0.02 / np.sqrt(6))):
        wide = to_wide(read_records(study / name / "variance.jsonl"))
        init = wide[(wide["step"] == 0) & (wide["role"] == "attn_proj")]["var"]
        assert len(init) == 3
        np.testing.assert_allclose(init, proj_std**2, rtol=0.15)


def test_same_seed_same_data_across_schemes(study):
    # same seed -> same batches: the logged first training losses of gpt2 and normal differ (other
    # weights), but the eval set is the same blocks: the eval token count is identical
    a = json.loads((study / "gpt2_seed0" / "run_info.json").read_text())
    b = json.loads((study / "normal_std0.05_seed0" / "run_info.json").read_text())
    assert a["eval_tokens"] == b["eval_tokens"] and a["blocks"] == b["blocks"]


def test_rerun_skips_finished_runs_and_redoes_an_interrupted_one(study, capsys):
    from hf_init.lm.study import run_study

    before = {n: (study / n / "run_info.json").stat().st_mtime_ns for n in RUNS}
    (study / "gpt2_seed1" / "run_info.json").unlink()  # as if interrupted before the end
    run_study([*SCHEMES, "--seeds", "2", "--output_dir", str(study), *TINY, "--report", "false"])
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, skipped") == 3
    after = {n: (study / n / "run_info.json").stat().st_mtime_ns for n in RUNS}
    assert [n for n in RUNS if after[n] != before[n]] == ["gpt2_seed1"]


def test_bad_input_one_line_nothing_written(tmp_path, capsys):
    from hf_init.core.cli import fail_cleanly
    from hf_init.lm.study import run_study

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = script("report.py", empty)
    assert (
        proc.returncode == 2 and proc.stderr.count("\n") == 1 and "holds no finished" in proc.stderr
    )
    assert list(empty.iterdir()) == []
    proc = script("init_study.py", *SCHEMES, "--seed", "3", "--output_dir", tmp_path / "s")
    assert (
        proc.returncode == 2 and proc.stderr.count("\n") == 1 and "set by the study" in proc.stderr
    )
    out = str(tmp_path / "s")
    for args, message in (
        (["--schemes", "bogus"], "unknown init scheme"),
        (["--schemes", "normal"], "normal:STD"),
        (["--seeds", "0"], "seeds must be >= 1"),
        (["--lr_scheduler_types", "wavy"], "unknown lr_scheduler_types"),
        (["--max_steps", "-5"], "max_steps"),
    ):
        assert fail_cleanly(lambda args=args: run_study([*args, "--output_dir", out])) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "s").exists()


def test_plan_crosses_learning_rates_and_schedules():
    from hf_init.lm.study import parse_study_args, plan

    study, passthrough = parse_study_args(
        [
            "--schemes",
            "gpt2",
            "normal:0.02",
            "--seeds",
            "2",
            "--learning_rates",
            "3e-4",
            "1e-3",
            "--lr_scheduler_types",
            "cosine",
            "constant_with_warmup",
            "--max_steps",
            "30",
        ]
    )
    assert passthrough == ["--max_steps", "30"]
    runs = plan(study)
    assert len(runs) == 2 * 2 * 2 * 2 and len({r.name for r in runs}) == 16
    assert "normal_std0.02_lr0.0003_constant_with_warmup_seed1" in {r.name for r in runs}
    argv = runs[0].argv(study, passthrough, Path("/o"))
    assert argv[-4:] == ["--learning_rate", "0.0003", "--lr_scheduler_type", "cosine"]
    with pytest.raises(UsageError):
        parse_study_args(["--learning_rates", "0"])
