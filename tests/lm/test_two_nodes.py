"""Two nodes, simulated on one machine: two ``accelerate launch`` processes with ``--num_machines 2
--machine_rank 0|1`` on localhost (gloo, CPU). Rank 1 is killed (SIGKILL) after step 6; rank 0
stops with one line naming the step and the resume command; both nodes resumed from checkpoint-4
end with the records and weights of an uninterrupted two-node run (three two-node runs of the tiny
model).

    PYTHONPATH=$PWD python -m pytest -q -m slow tests/test_two_nodes.py
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from test_run_lifecycle import ENV, TINY, messages, records, weights

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUN = [*TINY, "--max_steps", "12", "--save_strategy", "steps", "--save_steps", "4"]
KILL_AT = 6

# scripts/pretrain.py with a callback that kills this process (rank KILL_RANK) after step KILL_AT,
# as a node that dies leaves it: no clean-up, no message
WRAPPER = """
import os, runpy, signal, sys
from transformers import Trainer, TrainerCallback

class Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == {kill_at} and args.process_index == {kill_rank}:
            os.kill(os.getpid(), signal.SIGKILL)

init = Trainer.__init__
def patched(self, *a, **k):
    init(self, *a, **k)
    self.add_callback(Kill())
Trainer.__init__ = patched
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def two_nodes(out: Path, *extra, kill_rank: int = -1):
    """Both nodes' ``accelerate launch`` of the wrapped script, at once; (returncode, stdout,
    stderr) of each node and the worker's own stderr (torchrun's --log_dir) of each."""
    script = out.parent / f"{out.name}_wrapper.py"
    script.write_text(
        WRAPPER.format(
            kill_at=KILL_AT, kill_rank=kill_rank, script=str(ROOT / "scripts" / "pretrain.py")
        )
    )
    port, procs = free_port(), []
    for rank in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"),
            "--num_machines",
            "2",
            "--num_processes",
            "2",
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
            "--log_dir",
            str(out.parent / f"{out.name}_logs_node{rank}"),
            "--tee",
            "3",
            str(script),
            *RUN,
            "--output_dir",
            str(out),
            *extra,
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
            raise
        results.append((proc.returncode, stdout, stderr))
    logs = [
        "".join(
            p.read_text()
            for p in sorted((out.parent / f"{out.name}_logs_node{r}").rglob("stderr.log"))
        )
        for r in (0, 1)
    ]
    return results, logs


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_nodes") / "straight"
    results, _ = two_nodes(out)
    for rc, _, stderr in results:
        assert rc == 0, stderr[-3000:]
    return out


def test_a_killed_node_stops_the_other_with_one_line_and_the_run_resumes_to_the_same_records(
    straight, tmp_path
):
    out = tmp_path / "killed"
    (node0, node1), (worker0, _) = two_nodes(out, kill_rank=1)
    assert node1[0] != 0  # the killed node's launcher reports its worker's SIGKILL
    assert node0[0] != 0
    lines = messages(worker0)
    assert len(lines) == 1, worker0[-3000:]  # rank 0's own output: one line, no traceback
    line = lines[0]
    assert line.startswith(f"error: rank 0 stopped at step {KILL_AT}: another rank stopped")
    assert "continue from checkpoint-4 with: accelerate launch" in line
    assert line.endswith("--resume_from_checkpoint true (the same launch on every node)")
    assert not (out / "run_info.json").exists()

    results, _ = two_nodes(out, "--resume_from_checkpoint", "true")
    for rc, _, stderr in results:
        assert rc == 0, stderr[-3000:]
    a, b = records(straight / "variance.jsonl"), records(out / "variance.jsonl")
    key = lambda r: (r["step"], r["layer"], r["role"], r.get("head"))  # noqa: E731
    assert [key(r) for r in b] == [key(r) for r in a]
    for stat in ("var", "grad_var", "logit_std", "learning_rate", "loss", "grad_norm"):
        x = np.array([np.nan if r.get(stat) is None else r[stat] for r in a])
        y = np.array([np.nan if r.get(stat) is None else r[stat] for r in b])
        assert np.isfinite(x).any(), stat
        np.testing.assert_allclose(y, x, rtol=1e-6, atol=0, equal_nan=True, err_msg=stat)
    wa, wb = weights(straight), weights(out)
    for name in wa:
        np.testing.assert_allclose(wb[name], wa[name], rtol=1e-6, atol=1e-7, err_msg=name)
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["resumed_from"]["step"] == 4
