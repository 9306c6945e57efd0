"""A pretraining run's life: resumed after a crash (equal to an uninterrupted run), stopped when it
diverges, interrupted by SIGTERM, re-run over a failed run, and what each Hub push would carry.
Tiny model (2 layers x 32), tiny data, 8 steps: each run takes seconds to a minute on a CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "pretrain.py"
TINY = [
    "--n_layer",
    "2",
    "--n_embd",
    "32",
    "--n_head",
    "2",
    "--block_size",
    "32",
    "--vocab_size",
    "300",
    "--max_train_documents",
    "40",
    "--max_eval_samples",
    "16",
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "8",
    "--logging_steps",
    "2",
    "--variance_steps",
    "2",
    "--disable_tqdm",
    "true",
]
N = 4  # checkpoint every N steps; runs of 2N steps
RUN = [*TINY, "--max_steps", str(2 * N), "--save_strategy", "steps", "--save_steps", str(N)]
ENV = dict(
    os.environ,
    PYTHONPATH=str(ROOT),
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    TOKENIZERS_PARALLELISM="false",
    OMP_NUM_THREADS="1",
)

# A crash after step CRASH_AT, as a kill leaves it: the variance callback has written that step's
# records (and TensorBoard events have been flushed), then the process dies without any clean-up.
CRASH = """
import os, sys
from hf_init.lm.recorders import QKVVarianceCallback
from hf_init.core.cli import fail_cleanly
_orig = QKVVarianceCallback.on_step_end
def on_step_end(self, args, state, control, **kw):
    out = _orig(self, args, state, control, **kw)
    if state.global_step == {crash_at}:
        for s in self.sinks:
            getattr(s, "flush", lambda: None)()
        os._exit(137)
    return out
QKVVarianceCallback.on_step_end = on_step_end
from hf_init.lm.pretrain import run
sys.exit(fail_cleanly(lambda: run(sys.argv[1:])))
"""


def script(*args, timeout=300):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def in_process(*args):
    """scripts/pretrain.py's main in this process (conftest.run_main: the same exit status, stdout
    and stderr, without an interpreter start and torch import) on one torch thread, as ENV's
    OMP_NUM_THREADS gives the subprocesses (a resumed run is compared with an uninterrupted one to
    rtol 1e-6). The crash and SIGTERM runs stay subprocesses: their point is a process."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc, out, err = run_main("pretrain", *args)
    finally:
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess([str(SCRIPT), *map(str, args)], rc, out, err)


def messages(stderr):
    """stderr without the progress bars the Trainer draws when it saves a checkpoint."""
    return [
        line
        for line in stderr.strip().splitlines()
        if line.strip() and "Writing model shards" not in line
    ]


def records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def weights(folder):
    from safetensors.numpy import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def scalar_steps(run_folder, tag):
    """Steps of a scalar as TensorBoard shows them (event folders merged, restarts purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for d in sorted({p.parent for p in (Path(run_folder) / "runs").rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        steps += [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []
    return steps


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = in_process(*RUN, "--output_dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def crashed_and_resumed(tmp_path_factory):
    out = tmp_path_factory.mktemp("resumed") / "run"
    crash = subprocess.run(
        [sys.executable, "-c", CRASH.format(crash_at=N + 2), *RUN, "--output_dir", str(out)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crash.returncode == 137, crash.stderr[-3000:]
    left = records(out / "variance.jsonl")
    assert (
        max(r["step"] for r in left) == N + 2
    )  # records past the checkpoint, as a crash leaves them
    refused = in_process(
        *RUN, "--output_dir", out
    )  # the same command again: refused, naming the resume command
    resumed = in_process(*RUN, "--output_dir", out, "--resume_from_checkpoint", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return out, left, refused, resumed


def test_resumed_run_equals_the_uninterrupted_one(straight, crashed_and_resumed):
    out, left, _, _ = crashed_and_resumed
    a, b = records(straight / "variance.jsonl"), records(out / "variance.jsonl")
    key = lambda r: (r["step"], r["layer"], r["role"], r.get("head"))  # noqa: E731
    assert [key(r) for r in b] == [
        key(r) for r in a
    ]  # same records, same order, no gap, no duplicate
    assert len(set(map(key, b))) == len(b)
    for stat in (
        "var",
        "mean",
        "rms",
        "grad_var",
        "grad_rms",
        "logit_std",
        "entropy",
        "learning_rate",
        "loss",  # the spike monitor's, at its record steps
        "grad_norm",
    ):
        x = np.array([np.nan if r.get(stat) is None else r[stat] for r in a])
        y = np.array([np.nan if r.get(stat) is None else r[stat] for r in b])
        assert np.isfinite(x).any(), stat  # the statistic is really recorded
        np.testing.assert_allclose(y, x, rtol=1e-6, atol=0, equal_nan=True)
    wa, wb = weights(straight), weights(out)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_allclose(wb[name], wa[name], rtol=1e-6, atol=1e-7, err_msg=name)
    # what the crashed run wrote after the checkpoint is kept in a side file, not deleted
    side = records(out / f"variance.after-step-{N}.interrupted.jsonl")
    assert side == [r for r in left if r["step"] > N] and side


def test_resumed_tensorboard_has_no_duplicated_points(straight, crashed_and_resumed):
    out, _, _, _ = crashed_and_resumed
    for tag in ("q_var/layer_00", "v_grad_var/layer_01", "train/loss"):
        assert scalar_steps(out, tag) == scalar_steps(straight, tag), tag
    assert len({p.parent for p in (out / "runs").rglob("events.out.tfevents.*")}) == 1  # one stream


def test_run_info_says_resumed_and_from_where(straight, crashed_and_resumed):
    out, _, _, resumed = crashed_and_resumed
    info = json.loads((out / "run_info.json").read_text())
    assert info["resumed_from"] == {
        "checkpoint": str(out / f"checkpoint-{N}"),
        "step": N,
        "set_aside_file": f"variance.after-step-{N}.interrupted.jsonl",
        "set_aside_records": 2 * 6,
    }  # step N+2: 2 layers x 6 roles
    assert info["optimizer_steps"] == 2 * N
    assert json.loads((straight / "run_info.json").read_text())["resumed_from"] is None
    assert f"resumed from {out / f'checkpoint-{N}'} (step {N})" in resumed.stdout


def test_unfinished_run_refusal_names_it_and_gives_the_resume_command(crashed_and_resumed):
    out, _, refused, _ = crashed_and_resumed
    assert refused.returncode == 2
    err = refused.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert "did not finish" in err[0] and f"checkpoint-{N}" in err[0] and "variance.jsonl" in err[0]
    command = err[0].split("continue it with: ", 1)[1].split("  (or")[0]
    assert command.endswith(f"--output_dir {out} --resume_from_checkpoint true")
    assert " ".join(map(str, RUN)) in command


def test_resume_without_a_checkpoint_is_one_line(tmp_path):
    proc = in_process(*RUN, "--output_dir", tmp_path / "none", "--resume_from_checkpoint", "true")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "no checkpoint-<step> folder" in proc.stderr and not (tmp_path / "none").exists()


DIVERGE = [
    *TINY,
    "--logging_steps",
    "1",
    "--variance_steps",
    "1",
    "--max_steps",
    "20",
    "--save_strategy",
    "steps",
    "--save_steps",
    "2",
    "--learning_rate",
    "100",
    "--max_grad_norm",
    "0",
    "--warmup_steps",
    "0",
]


def check_diverged_run(proc, out):
    """A run at learning rate 100 without clipping really diverges (no patched NaN): one line
    naming the step, the layer and the weight; non-zero exit; records and checkpoints up to the
    step before."""
    import re

    import torch
    from transformers import AutoModelForCausalLM

    assert proc.returncode == 1, proc.stderr[-3000:]
    err = messages(proc.stderr)
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    m = re.match(r"error: training diverged at step (\d+): .*layer (\d+) (\S+)", err[0])
    assert m, err[0]
    step = int(m.group(1))
    assert step > 2 and "weight" in m.group(3)
    recs = records(out / "variance.jsonl")
    assert max(r["step"] for r in recs) == step - 1 and all(
        np.isfinite(r["var"]) for r in recs if "var" in r
    )
    ckpts = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert ckpts == list(range(2, step, 2))  # every checkpoint up to the last good step, none after
    assert not (out / "model.safetensors").exists()  # no NaN weights saved as the run's model
    # diverged.json (not run_info.json) says what the run was and where it diverged
    assert not (out / "run_info.json").exists()
    ended = json.loads((out / "diverged.json").read_text())
    # the printed line is the recorded message, plus (after a failed overwrite) where each run is
    assert ended["diverged_at_step"] == step and err[0].startswith(ended["message"])
    assert ended["optimizer_steps"] == step - 1  # the diverging update was not applied
    assert ended["config"]["training"]["learning_rate"] == 100 and ended["vocab_size"] > 0
    # the last checkpoint's weights are finite and are the ones the records of its step describe
    last = ckpts[-1]
    model = AutoModelForCausalLM.from_pretrained(out / f"checkpoint-{last}")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    w = model.transformer.h[1].mlp.c_proj.weight.detach().double()
    rec = next(r for r in recs if (r["step"], r["layer"], r["role"]) == (last, 1, "mlp_proj"))
    assert rec["var"] == pytest.approx(w.var(unbiased=False).item(), rel=1e-6)
    return step


def test_diverging_run_stops_naming_step_layer_weight(tmp_path):
    out = tmp_path / "run"
    check_diverged_run(in_process(*DIVERGE, "--output_dir", out), out)


def snapshot(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def test_failed_overwrite_run_keeps_both_runs_and_says_which_is_which(straight, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight, out)
    before = {
        k: v for k, v in snapshot(out).items() if k != "README.md"
    }  # not a run marker: stays in place
    proc = in_process(*DIVERGE, "--output_dir", out, "--overwrite_output_dir", "true")
    check_diverged_run(proc, out)  # the failed run's checkpoints and records stay where it ran
    earlier = tmp_path / "run.previous-1"
    assert snapshot(earlier) == before  # the earlier run, byte for byte
    assert f"stay in {str(out)!r}" in proc.stderr and f"is in {str(earlier)!r}" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.previous-1"]


def test_sigterm_stops_like_ctrl_c_and_the_run_can_be_resumed(tmp_path):
    """SIGTERM (a cluster time limit) at a checkpoint: records flushed, one line naming the resume
    command, exit 128 + 15; the same command with --resume_from_checkpoint true is then accepted."""
    out = tmp_path / "run"
    args = [
        *TINY,
        "--max_steps",
        "400",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--output_dir",
        str(out),
    ]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while (
            not (out / "checkpoint-4").is_dir()
            and time.monotonic() < deadline
            and proc.poll() is None
        ):
            time.sleep(0.2)
        assert (out / "checkpoint-4").is_dir(), "no checkpoint written"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    err = messages(stderr)
    assert len(err) == 1 and err[0].startswith("interrupted (SIGTERM) at step "), stderr[-3000:]
    step = int(err[0].split(" at step ")[1].split(":")[0])
    recs = records(out / "variance.jsonl")  # whole lines, up to the step it stopped at
    assert max(r["step"] for r in recs) == step and step >= 4
    assert "--resume_from_checkpoint true" in err[0] and f"--output_dir {out}" in err[0]


# What each Hub push would upload, offline: the Hub client is replaced by one that records, at the
# moment of each upload, the files it would send (after the Trainer's ignore patterns) and reads
# what matters from them. The login check is skipped; everything else is the script's own path.
class FakeHub:
    def __init__(self):
        self.pushes = []

    def create_repo(self, *a, **k):
        from types import SimpleNamespace

        return SimpleNamespace(repo_id="someone/run")

    def upload_folder(
        self, *, folder_path, path_in_repo=None, ignore_patterns=None, run_as_future=False, **k
    ):
        import fnmatch
        from concurrent.futures import Future

        root = Path(folder_path)
        ignored = ignore_patterns or []
        names = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
        files = sorted(n for n in names if not any(fnmatch.fnmatch(n, pat) for pat in ignored))
        var = root / "variance.jsonl"
        lines = var.read_text().splitlines() if var.is_file() else []
        steps = [json.loads(x)["step"] for x in lines]
        readme = (root / "README.md").read_text() if (root / "README.md").is_file() else None
        self.pushes.append(
            {
                "path_in_repo": path_in_repo,
                "folder": str(root),
                "files": files,
                "max_step": max(steps, default=None),
                "readme": readme,
                "token_in_env": os.environ.get("HF_TOKEN"),
                "token_arg": k.get("token"),
            }
        )
        if run_as_future:
            f = Future()
            f.set_result(None)
            return f


def fake_hub_run(*args):
    """scripts/pretrain.py in this process (:func:`in_process`) with :class:`FakeHub` as the
    Trainer's Hub client: (CompletedProcess, the pushes in order)."""
    import transformers.trainer as trainer_module

    import hf_init.lm.pretrain as pretrain

    hub = FakeHub()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "hf_api", lambda: hub)
        mp.setattr(pretrain, "check_hub_access", lambda token=None: None)
        proc = in_process(*args)
    return proc, hub.pushes


FAKE_TOKEN = "hf_FAKEtokenDoNotWrite1234567890"


def test_every_hub_push_carries_records_so_far_and_the_token_is_never_written(tmp_path):
    out = tmp_path / "run"
    args = [
        *TINY,
        "--max_steps",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--variance_steps",
        "1",
        "--push_to_hub",
        "true",
        "--hub_strategy",
        "checkpoint",
        "--hub_token",
        FAKE_TOKEN,
        "--output_dir",
        str(out),
    ]
    proc, pushes = fake_hub_run(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt_pushes = [p for p in pushes if p["path_in_repo"] == "last-checkpoint"]
    assert [p["max_step"] for p in ckpt_pushes] == [
        2,
        4,
    ]  # each checkpoint: the records up to its step
    for p in ckpt_pushes:
        assert {
            "variance.jsonl",
            "figures/qkv_variance_vs_step.png",
            "figures/qkv_variance_heatmap.png",
            "model.safetensors",
            "trainer_state.json",
        } <= set(p["files"])
    final = pushes[-1]
    assert final["path_in_repo"] is None and final["max_step"] == 4
    assert {
        "variance.jsonl",
        "figures/qkv_variance_vs_step.png",
        "README.md",
        "model.safetensors",
    } <= set(final["files"])
    info = json.loads((out / "run_info.json").read_text())
    card = final["readme"]
    for needle in (
        "init scheme: `gpt2`",
        f"{info['n_parameters']:,} parameters",
        str(info["corpus"]["name"]),
        "optimizer steps: 4",
        f"final perplexity: {info['perplexity']:.2f}",
        "![Q/K/V weight variance per layer vs step](figures/qkv_variance_vs_step.png)",
    ):
        assert needle in card, needle
    # the uploads would be authenticated (huggingface_hub reads HF_TOKEN) ...
    assert all(p["token_in_env"] == FAKE_TOKEN for p in pushes)
    # ... but the token is in no file of the run folder and in no output
    for p in out.rglob("*"):
        if p.is_file():
            assert FAKE_TOKEN.encode() not in p.read_bytes(), p
    assert FAKE_TOKEN not in proc.stdout and FAKE_TOKEN not in proc.stderr
    assert info["command"].count("<hub_token>") == 1


def test_non_finite_recorded_variance_stops_naming_step_layer_weight():
    from hf_init.core.cli import RunStopped
    from hf_init.core.records import make_record
    from hf_init.lm.sinks import NonFiniteRecords

    sink = NonFiniteRecords()
    sink.write([make_record(3, 0, "q", {"var": 1.0}), make_record(3, 1, "v", {"var": 2.0})])
    with pytest.raises(
        RunStopped, match=r"diverged at step 3: non-finite variance of layer 1 k weight"
    ):
        sink.write(
            [make_record(3, 0, "q", {"var": 1.0}), make_record(3, 1, "k", {"var": float("inf")})]
        )


def test_only_a_lost_peer_becomes_the_stop_line_other_errors_stay_crashes(tmp_path):
    """train() on a rank whose collective failed: a lost peer (gloo's wording, world size 2)
    flushes the records and becomes the one-line stop naming the rank and the step; any other
    RuntimeError (here CUDA's out-of-memory) propagates unchanged, as the crash it is."""
    from types import SimpleNamespace

    from hf_init.core.cli import RunStopped
    from hf_init.lm.pretrain import train
    from hf_init.lm.run_folder import RunFolder

    class Failing:
        state = SimpleNamespace(global_step=7)

        def __init__(self, err):
            self.err = err

        def train(self, resume_from_checkpoint=None):
            raise self.err

    class Recorder:
        flushed = 0

        def flush(self):
            self.flushed += 1

    setup = SimpleNamespace(
        checkpoint=None,
        training_args=SimpleNamespace(world_size=2, process_index=1),
        folder=RunFolder(tmp_path),
        argv=["--output_dir", str(tmp_path)],
        is_main=False,
    )
    recorder = Recorder()
    reset = RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection reset by peer [10.0.0.2]")
    with pytest.raises(RunStopped, match="rank 1 stopped at step 7: another rank stopped answ"):
        train(Failing(reset), [recorder], setup)
    assert recorder.flushed == 1
    oom = RuntimeError("CUDA out of memory")
    with pytest.raises(RuntimeError) as err:
        train(Failing(oom), [recorder], setup)
    assert err.value is oom and recorder.flushed == 1
