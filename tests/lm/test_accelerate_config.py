"""hf_init/lm/accelerate_config.py: the README's one-command set-up for `accelerate launch`."""

import os
import subprocess
import sys
from pathlib import Path

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
