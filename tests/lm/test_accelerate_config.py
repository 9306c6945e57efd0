"""hf_init/lm/accelerate_config.py: the README's one-command set-up for `accelerate launch`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "pretrain.py"


def test_after_the_setup_a_plain_accelerate_launch_prints_one_line(tmp_path):
    """The README's set-up (python -m hf_init.lm.accelerate_config) then `accelerate launch -q`: no
    "values were not passed" block, and a bad flag is the script's one line (no launcher
    traceback)."""
    import shutil

    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    env.pop("OMP_NUM_THREADS", None)
    setup = subprocess.run(
        [sys.executable, "-m", "hf_init.lm.accelerate_config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        setup.returncode == 0 and (tmp_path / "hf" / "accelerate" / "default_config.yaml").is_file()
    )
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    proc = subprocess.run(
        [launcher, "launch", "-q", str(SCRIPT), "--max_stepz", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: unknown argument --max_stepz (did you mean --max_steps? see --help for valid flags)"
    ]
    assert "were not passed" not in proc.stdout


@pytest.mark.parametrize(
    "use_cpu, distributed_type, written_use_cpu",
    [
        (True, "NO", False),  # one CPU process: the scripts pick the CPU themselves
        (True, "MULTI_CPU", True),  # a distributed CPU launch keeps accelerate's choice
        (False, "NO", False),
        (False, "MULTI_GPU", False),
    ],
)
def test_only_a_single_process_cpu_config_has_use_cpu_turned_off(
    tmp_path, monkeypatch, use_cpu, distributed_type, written_use_cpu
):
    """write_default_config on a faked ``accelerate config default``: use_cpu is turned off only
    when accelerate chose the CPU for one process; every other key is written as accelerate
    wrote it, and an existing config is left as it is."""
    from accelerate.commands.config import config_args, default

    from hf_init.lm.accelerate_config import write_default_config

    stock = {"use_cpu": use_cpu, "distributed_type": distributed_type, "num_processes": 2}

    def fake_write_basic_config(mixed_precision, save_location):
        Path(save_location).write_text(json.dumps(stock))

    target = tmp_path / "accelerate" / "default_config.yaml"
    monkeypatch.setattr(config_args, "default_yaml_config_file", str(target))
    monkeypatch.setattr(default, "write_basic_config", fake_write_basic_config)
    assert write_default_config() == (target, True)
    assert json.loads(target.read_text()) == dict(stock, use_cpu=written_use_cpu)
    target.write_text("kept: 1\n")
    assert write_default_config() == (target, False)
    assert target.read_text() == "kept: 1\n"
