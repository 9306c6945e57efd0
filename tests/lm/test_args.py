"""The pretraining command line (hf_init/lm/args.py): init options a scheme does not read are
refused, a partial YAML keeps the default config's other values, --help answers without torch,
mistyped or abbreviated flags are one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_main

from hf_init.core.cli import UsageError

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "pretrain.py"


@pytest.mark.parametrize(
    "scheme, flag, value, reads",
    [
        ("kaiming_normal", "init_std", 0.1, "normal"),
        ("kaiming_normal", "init_gain", 2.0, "xavier_normal"),
        ("deepnet", "init_std", 0.1, "normal"),
        ("small_init", "initializer_range", 0.1, "gpt2"),
        ("gpt2", "init_fan_mode", "fan_out", "kaiming_normal"),
    ],
)
def test_an_option_the_scheme_does_not_read_is_refused(scheme, flag, value, reads):
    from hf_init.lm.args import ModelArguments

    with pytest.raises(
        UsageError, match=rf"init scheme '{scheme}' does not use --{flag} .*{reads}"
    ):
        ModelArguments(init_scheme=scheme, **{flag: value})


def test_options_a_scheme_reads_are_accepted():
    from hf_init.lm.args import ModelArguments

    ModelArguments(init_scheme="normal", init_std=0.1)
    ModelArguments(init_scheme="xavier_uniform", init_gain=2.0, initializer_range=0.01)
    ModelArguments(init_scheme="kaiming_uniform", init_fan_mode="fan_out", init_nonlinearity="tanh")


def test_a_partial_yaml_keeps_the_default_configs_other_values(tmp_path):
    """The layering rule: keys a user YAML leaves out keep pretrain_tiny.yaml's values."""
    import yaml

    from hf_init.lm.args import DEFAULT_CONFIG, parse_args

    cfg = tmp_path / "mine.yaml"
    cfg.write_text("n_layer: 2\nmax_steps: 7\noutput_dir: x\ninit_scheme: xavier_normal\n")
    model, data, run, training, _ = parse_args([str(cfg)])
    tiny = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert (model.n_layer, training.max_steps, model.init_scheme) == (2, 7, "xavier_normal")
    assert data.block_size == tiny["block_size"] and training.learning_rate == float(
        tiny["learning_rate"]
    )
    assert training.lr_scheduler_type.value == tiny["lr_scheduler_type"]
    assert [str(r) for r in training.report_to] == [tiny["report_to"]]
    assert training.save_strategy.value == "no"


HEAVY = ("torch", "transformers", "datasets", "accelerate")


def _modules_after(*argv):
    """Run scripts/pretrain.py's main in a fresh interpreter; return (exit status, stderr, the heavy
    modules it imported)."""
    code = (
        "import sys, runpy; sys.argv = ['pretrain.py', *sys.argv[1:]]\n"
        f"try:\n    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    *lines, heavy = proc.stderr.strip().splitlines()
    return proc.returncode, proc.stdout, lines, heavy


def test_help_answers_without_importing_torch_or_transformers():
    rc, out, err, heavy = _modules_after("--help")
    assert rc == 0 and heavy == "HEAVY []", (err, heavy)
    out = " ".join(out.split())  # argparse wraps the help to the terminal's width
    assert "--learning_rate LEARNING_RATE" in out and "(default: 0.001)" in out  # built-in YAML
    assert "--init_scheme" in out and "(default: 'gpt2')" in out and "--sample_by" in out


def test_a_mistyped_flag_is_one_line_naming_the_closest_flag():
    rc, _, err = run_main("pretrain", "--max_stepz", "3")  # the script's exit status and stderr
    assert rc == 2 and err.strip().splitlines() == [
        "error: unknown argument --max_stepz (did you mean --max_steps? see --help for valid flags)"
    ]


@pytest.mark.parametrize("flag", ["--max_step", "--learn", "--init_sch"])
def test_abbreviations_are_refused(flag):
    from hf_init.lm.args import parse_args

    with pytest.raises(UsageError, match=f"unknown argument {flag} "):
        parse_args([flag, "3"])


def test_help_lists_the_full_parsers_flags():
    """The flags --help reads from source are exactly the option strings HfArgumentParser builds."""
    import re

    from hf_init.lm.args import build_parser, help_text

    listed = set(re.findall(r"^  --(\w+)", help_text(), flags=re.M))
    options = {
        o[2:].replace("-", "_")
        for a in build_parser()._actions
        for o in a.option_strings
        if o.startswith("--") and o != "--help"
    }
    assert {o for o in options if not (o.startswith("no_") and o[3:] in listed)} == listed


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--attention_probe_steps", "0", "attention_probe_steps must be >= 1, got 0"),
        ("--attention_probe_blocks", "-1", "attention_probe_blocks must be >= 0, got -1"),
        ("--variance_steps", "0", "variance_steps must be >= 1, got 0"),
    ],
)
def test_recording_intervals_below_one_are_refused(flag, value, message):
    from hf_init.lm.args import parse_args

    with pytest.raises(UsageError, match=message):
        parse_args([flag, value])


@pytest.mark.parametrize("present", [None, "cuda", "xpu", "mps"])
def test_each_kind_of_accelerator_alone_counts_as_one(monkeypatch, present):
    """The defaults use the GPU when there is one: CUDA, XPU or MPS, each alone, is an
    accelerator; none of them is none."""
    import torch

    from hf_init.lm.args import accelerator_available

    monkeypatch.setattr(torch.cuda, "is_available", lambda: present == "cuda")
    monkeypatch.setattr(torch.xpu, "is_available", lambda: present == "xpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: present == "mps")
    assert accelerator_available() is (present is not None)


def test_without_an_accelerator_the_job_trains_on_the_cpu():
    """No accelerator here: parse_args defaults use_cpu to True, so that accelerate launch runs
    real gloo DDP on a CPU machine instead of every rank alone."""
    from hf_init.lm.args import accelerator_available, parse_args

    if accelerator_available():
        pytest.skip("this machine has an accelerator")
    *_, training, _ = parse_args(["--output_dir", "unused"])
    assert training.use_cpu is True


def test_help_shows_each_of_our_flags_with_its_own_help_text():
    """The help read from source carries, for every field of the three argument dataclasses, the
    help text the dataclass declares (read here with dataclasses.fields on the imported class)."""
    import dataclasses
    import re

    from hf_init.lm.args import DataArguments, ModelArguments, RunArguments, help_text

    def compact(s):  # argparse wraps lines, at spaces and after hyphens
        return re.sub(r"\s+", "", s)

    text = compact(help_text())
    for cls in (ModelArguments, DataArguments, RunArguments):
        for f in dataclasses.fields(cls):
            if f.name.startswith("_") or "help" not in f.metadata:
                continue
            assert compact(f"--{f.name} {f.name.upper()} {f.metadata['help']}") in text, f.name
