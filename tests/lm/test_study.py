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
from conftest import run_main

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
    rc, _, err = run_main("report", empty)  # the script's exit status and stderr, in-process
    assert rc == 2 and err.count("\n") == 1 and "holds no finished" in err
    assert list(empty.iterdir()) == []
    rc, _, err = run_main("init_study", *SCHEMES, "--seed", "3", "--output_dir", tmp_path / "s")
    assert rc == 2 and err.count("\n") == 1 and "set by the study" in err
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


def test_default_study_can_reach_the_test_level():
    from hf_init.lm.equilibration import ALPHA, sign_flip_test
    from hf_init.lm.study import parse_study_args, plan

    study, _ = parse_study_args([])
    assert study.seeds == 5 and "depth_scaled" in study.schemes and len(plan(study)) == 30
    # all 5 seeds in the claimed direction: p = 1/2^5 (every sign flip but none is less extreme)
    assert sign_flip_test([-0.5, -0.3, -0.8, -0.2, -0.9])["p_less"] == 1 / 32 <= ALPHA


def test_plan_crosses_warmups_and_optimizers(tmp_path):
    from hf_init.lm.study import parse_study_args, plan

    study, passthrough = parse_study_args(
        [
            *("--schemes", "gpt2", "--seeds", "1", "--warmups", "15", "150"),
            *("--optimizers", "adamw_torch", "sgd:momentum=0.9,lr=0.3,weight_decay=3e-5"),
        ]
    )
    runs = plan(study)
    names = [r.name for r in runs]
    assert names == [
        "gpt2_wu15_adamw_torch_seed0",
        "gpt2_wu15_sgd_momentum0.9_lr0.3_weight_decay3e-5_seed0",
        "gpt2_wu150_adamw_torch_seed0",
        "gpt2_wu150_sgd_momentum0.9_lr0.3_weight_decay3e-5_seed0",
    ]
    argv = runs[1].argv(study, passthrough, Path("/o"))
    flags = " ".join(argv[argv.index("--warmup_steps") :])
    assert flags == (
        "--warmup_steps 15 --optim sgd --learning_rate 0.3 --weight_decay 3e-05 "
        "--optim_args momentum=0.9"
    )
    # run_flags of a study YAML come before the command line's own flags
    config = tmp_path / "s.yaml"
    config.write_text('schemes: [gpt2]\nrun_flags: [--max_steps, "40"]\n')
    study, passthrough = parse_study_args([str(config), "--max_steps", "50"])
    argv = plan(study)[0].argv(study, passthrough, Path("/o"))
    assert argv[1:5] == ["--max_steps", "40", "--max_steps", "50"]


def test_bad_crossings_are_one_line(tmp_path, capsys):
    from hf_init.core.cli import fail_cleanly
    from hf_init.lm.study import run_study

    config = tmp_path / "s.yaml"
    config.write_text("run_flags: [--seed, '3']\n")
    for args, message in (
        (["--optimizers", "adamw_bogus"], "unknown optimizer 'adamw_bogus'"),
        (["--optimizers", "sgd:momentum"], "write NAME:key=value"),
        (["--optimizers", "sgd:lr=-1"], "lr in optimizer 'sgd:lr=-1' must be"),
        (["--optimizers", "sgd:lr=0.1", "--learning_rates", "1e-3"], "give one or the other"),
        (["--warmups", "-1"], "warmups must be >= 0"),
        ([str(config)], "--seed is set by the study"),
    ):
        argv = [*args, "--output_dir", str(tmp_path / "s")]
        assert fail_cleanly(lambda argv=argv: run_study(argv)) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def lr_study(tmp_path_factory):
    """gpt2 at learning rates 1e-3 and 100 without clipping: the second diverges."""
    from hf_init.lm.study import run_study

    out = tmp_path_factory.mktemp("lr_study") / "s"
    flags = ["--max_steps", "20", "--max_grad_norm", "0", "--warmup_steps", "0"]
    run_study(
        ["--schemes", "gpt2", "--seeds", "1", "--learning_rates", "1e-3", "100"]
        + ["--output_dir", str(out), *TINY, *flags]
    )
    return out


def test_a_diverged_run_leaves_its_file_and_the_study_goes_on(lr_study, capsys):
    from hf_init.lm.study import run_study

    ended = json.loads((lr_study / "gpt2_lr100_seed0" / "diverged.json").read_text())
    assert ended["diverged_at_step"] >= 1 and ended["config"]["training"]["learning_rate"] == 100
    assert (lr_study / "gpt2_lr0.001_seed0" / "run_info.json").is_file()
    flags = [
        "--max_steps",
        "20",
        "--max_grad_norm",
        "0",
        "--warmup_steps",
        "0",
        "--report",
        "false",
    ]
    run_study(
        ["--schemes", "gpt2", "--seeds", "1", "--learning_rates", "1e-3", "100"]
        + ["--output_dir", str(lr_study), *TINY, *flags]
    )
    printed = capsys.readouterr().out
    assert "diverged earlier, skipped" in printed and "finished earlier, skipped" in printed


def test_report_counts_a_diverged_run_at_chance_in_the_lr_sensitivity(lr_study):
    import math

    md = (lr_study / "report.md").read_text()
    good = json.loads((lr_study / "gpt2_lr0.001_seed0" / "run_info.json").read_text())
    chance = math.log(good["vocab_size"])  # the uniform prediction's cross-entropy
    row = next(line for line in md.splitlines() if line.startswith("| gpt2 | 2 | 0.001 | 100 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # columns: scheme, n_lrs, lr_min, lr_max, best_lr, best_loss, lr_sensitivity, ...
    assert float(cells[5]) == pytest.approx(good["eval_loss"], rel=1e-3)
    # mean over the two rates of (capped loss - best): ((L - L) + (chance - L)) / 2
    assert float(cells[6]) == pytest.approx((chance - good["eval_loss"]) / 2, rel=1e-3)
    assert "1 of 2 runs diverged" in md and "## Stability" in md
    assert "![final loss against learning rate]" in md
