"""The run folder type (hf_init/lm/run_folder.py) on hand-made folders: what it holds, the check
before a run writes into it, the records a resume sets aside and a checkpoint carries, the last
checkpoint, and SIGTERM turned into the one-line interrupt."""

import json
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hf_init.core.cli import UsageError
from hf_init.lm.run_folder import (
    RUN_MARKERS,
    Interrupted,
    RecordsInCheckpoints,
    RunFolder,
    interrupted,
    latest_events_dir,
    lost_peer,
    lost_peer_error,
    resolve_resume,
    resume_from,
    sigterm_as_interrupt,
)

# a records file as a crash leaves it: steps 0..6, a record without a step, a torn last line
LINES = [
    '{"step": 0, "layer": 0, "role": "q", "var": 1.0}\n',
    '{"step": 2, "layer": 0, "role": "q", "var": 2.0}\n',
    '{"step": null, "layer": null, "role": null, "loss": 3.0}\n',
    '{"step": 4, "layer": 0, "role": "q", "var": 4.0}\n',
    "\n",
    '{"step": 6, "layer": 0, "role": "q", "var": 6.0}\n',
    '{"step": 8, "lay',
]
UP_TO_4 = [LINES[0], LINES[1], LINES[2], LINES[3]]
AFTER_4 = [LINES[5], LINES[6] + "\n"]


def checkpoint(folder, step):
    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


def test_what_a_finished_run_folder_holds_in_print_order(tmp_path):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "variance.jsonl"):
        (tmp_path / name).write_text("x")
    for name in ("figures", "runs", "checkpoint-10"):
        (tmp_path / name).mkdir()
    (tmp_path / "README.md").write_text("card")
    folder = RunFolder(tmp_path)
    assert not folder.is_finished()
    (tmp_path / "run_info.json").write_text('{"eval_loss": 1.5}')
    assert folder.is_finished() and folder.read_info() == {"eval_loss": 1.5}
    assert folder.parts() == [
        "model",
        "tokenizer",
        "variance.jsonl",
        "figures/",
        "runs/ (TensorBoard)",
        "checkpoint-*/",
        "run_info.json",
        "README.md (model card)",
    ]
    (tmp_path / "variance.after-step-10.interrupted.jsonl").write_text("")
    assert "records set aside by a resume" in folder.parts()


def test_the_model_card_alone_is_no_run_and_everything_else_is(tmp_path):
    (tmp_path / "README.md").write_text("mine")
    assert RunFolder(tmp_path).check_new_run(False, ["--output_dir", str(tmp_path)]) == []
    assert "README.md" not in RUN_MARKERS
    for name in ("variance.jsonl", "run_info.json", "training_args.bin", "checkpoint-*"):
        assert name in RUN_MARKERS


@pytest.mark.parametrize(
    "name", ["generation_config.json", "tokenizer_config.json", "training_args.bin"]
)
def test_folder_with_only_a_saved_side_file_counts_as_a_run(tmp_path, name):
    (tmp_path / name).write_bytes(b"x")
    folder = RunFolder(tmp_path)
    with pytest.raises(UsageError, match=name):
        folder.check_new_run(False, ["--output_dir", str(tmp_path)])
    assert folder.check_new_run(True, ["--output_dir", str(tmp_path)]) == [name]


def test_interrupted_run_without_checkpoint_is_refused_with_the_restart_command(
    tmp_path, monkeypatch
):
    """What SIGINT at step 10 leaves (variance.jsonl and runs/ only) blocks the same command,
    which then names what the folder holds and the exact command that restarts it."""
    monkeypatch.setattr(sys, "argv", ["scripts/pretrain.py"])
    (tmp_path / "variance.jsonl").write_text('{"step": 10}\n')
    (tmp_path / "runs").mkdir()
    argv = [
        "configs/x.yaml",
        "--max_steps",
        "50",
        "--overwrite_output_dir=false",
        "--output_dir",
        str(tmp_path),
    ]
    folder = RunFolder(tmp_path)
    with pytest.raises(UsageError) as err:
        folder.check_new_run(False, argv)
    msg = str(err.value)
    assert "did not finish and has no checkpoint (variance.jsonl, runs; no run_info.json)" in msg
    assert msg.endswith(
        f"restart it with: python scripts/pretrain.py configs/x.yaml --max_steps 50 "
        f"--output_dir {tmp_path} --overwrite_output_dir true"
    )
    (tmp_path / "run_info.json").write_text("{}")  # a finished run: the plain refusal
    with pytest.raises(UsageError, match="pass --overwrite_output_dir to replace it"):
        folder.check_new_run(False, argv)


def test_an_unfinished_run_message_names_up_to_four_things_found():
    """The refusal names what the folder holds: four things in full, a fifth as "..."."""
    from hf_init.lm.run_folder import unfinished_run_message

    found = ["a.jsonl", "b.jsonl", "c.jsonl", "d.jsonl", "e.jsonl"]
    argv = ["--output_dir", "x"]
    four = unfinished_run_message(RunFolder(Path("x")), found[:4], argv)
    assert "(a.jsonl, b.jsonl, c.jsonl, d.jsonl; no run_info.json)" in four
    five = unfinished_run_message(RunFolder(Path("x")), found, argv)
    assert "(a.jsonl, b.jsonl, c.jsonl, d.jsonl, ...; no run_info.json)" in five


def test_last_checkpoint_is_the_highest_step_with_a_trainer_state(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.last_checkpoint() is None
    checkpoint(tmp_path, 4)
    checkpoint(tmp_path, 12)
    (tmp_path / "checkpoint-20").mkdir()  # being written: no trainer state yet
    (tmp_path / "checkpoint-old").mkdir()
    assert folder.last_checkpoint() == tmp_path / "checkpoint-12"


def test_resume_sets_aside_later_and_torn_lines_byte_for_byte(tmp_path):
    (tmp_path / "variance.jsonl").write_text("".join(LINES))
    ckpt = checkpoint(tmp_path, 4)
    folder = RunFolder(tmp_path)
    assert resume_from(folder, ckpt, main_process=False) == {
        "checkpoint": str(ckpt),
        "step": 4,
        "set_aside_file": None,
        "set_aside_records": 0,
    }
    assert (tmp_path / "variance.jsonl").read_text() == "".join(LINES)  # other ranks touch nothing
    resumed = resume_from(folder, ckpt, main_process=True)
    assert resumed == {
        "checkpoint": str(ckpt),
        "step": 4,
        "set_aside_file": "variance.after-step-4.interrupted.jsonl",
        "set_aside_records": 2,
    }
    assert (tmp_path / "variance.jsonl").read_text() == "".join(UP_TO_4)
    side = tmp_path / "variance.after-step-4.interrupted.jsonl"
    assert side.read_text() == "".join(AFTER_4)
    # a second interruption after the same checkpoint: its later lines are added to the side file
    with open(tmp_path / "variance.jsonl", "a") as f:
        f.write(LINES[5])
    assert folder.set_aside_records_after(4) == ("variance.after-step-4.interrupted.jsonl", 1)
    assert side.read_text() == "".join(AFTER_4) + LINES[5]
    assert folder.set_aside_records_after(4) == (None, 0)  # nothing after the step: untouched
    assert RunFolder(tmp_path / "none").set_aside_records_after(4) == (None, 0)


def test_each_checkpoint_carries_the_records_up_to_its_step_and_their_figures(tmp_path):
    step_lines = [
        json.dumps({"step": s, "layer": layer, "role": r, "var": 1.0 + s, "grad_var": 0.5}) + "\n"
        for s in (0, 2, 4)
        for layer in (0, 1)
        for r in ("q", "k", "v")
    ]
    (tmp_path / "variance.jsonl").write_text("".join(step_lines))
    ckpt = checkpoint(tmp_path, 2)
    callback = RecordsInCheckpoints(RunFolder(tmp_path))
    state = SimpleNamespace(global_step=2, is_world_process_zero=True)
    callback.on_save(None, state, None)
    assert (ckpt / "variance.jsonl").read_text() == "".join(step_lines[:12])  # steps 0 and 2
    for figures in (ckpt / "figures", tmp_path / "figures"):
        assert (figures / "qkv_variance_vs_step.png").is_file()
    (ckpt / "variance.jsonl").unlink()
    callback.on_push_begin(None, state, None)  # the same step again: done once
    assert not (ckpt / "variance.jsonl").exists()
    other = SimpleNamespace(global_step=4, is_world_process_zero=False)
    checkpoint(tmp_path, 4)
    callback.on_save(None, other, None)  # not the main process: nothing
    assert not (tmp_path / "checkpoint-4" / "variance.jsonl").exists()


def test_sigterm_becomes_the_one_line_interrupt_and_the_handler_is_put_back(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["scripts/pretrain.py"])
    checkpoint(tmp_path, 6)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught, sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before
    stopped = interrupted(RunFolder(tmp_path), 7, ["--output_dir", str(tmp_path)], caught.value)
    assert stopped.code == 128 + 15
    assert str(stopped) == (
        f"interrupted (SIGTERM) at step 7: records up to step 7 are in "
        f"{str(tmp_path / 'variance.jsonl')!r}; continue from checkpoint-6 with: python "
        f"scripts/pretrain.py --output_dir {tmp_path} --resume_from_checkpoint true"
    )
    ctrl_c = interrupted(RunFolder(tmp_path / "none"), 3, [], KeyboardInterrupt())
    assert ctrl_c.code == 128 + 2 and str(ctrl_c).startswith("interrupted (SIGINT) at step 3")
    assert "no checkpoint to resume from; restart with: " in str(ctrl_c)


def test_a_lost_peer_is_named_by_what_the_collective_said(tmp_path):
    """A collective that failed because another rank is gone: detected only with more than one
    rank; the stop line quotes the wording that gave it away (gloo's, NCCL's) or, for a bare
    DistError, its type; exit status 1; the command that continues the run."""
    import torch.distributed as dist

    reset = RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection reset by peer [10.0.0.2]")
    assert lost_peer(reset, world_size=2) and not lost_peer(reset, world_size=1)
    assert not lost_peer(RuntimeError("CUDA out of memory"), world_size=2)
    argv = ["--output_dir", str(tmp_path)]
    stop = lost_peer_error(RunFolder(tmp_path), 12, 1, argv, reset)
    assert str(stop).startswith(
        "error: rank 1 stopped at step 12: another rank stopped answering "
        "(Connection reset by peer): "
    )
    assert stop.code == 1 and "restart with:" in str(stop)
    dist_error = dist.DistError("recv failed")
    assert lost_peer(dist_error, world_size=4)
    assert "answering (DistError):" in str(
        lost_peer_error(RunFolder(tmp_path), 3, 0, argv, dist_error)
    )


def test_latest_events_dir_is_the_folder_of_the_newest_events_file(tmp_path):
    """A resumed run writes on in the folder whose events file was written last (by mtime, not
    by name), anywhere under runs/; a folder with no events file (or no runs/) gives None."""
    assert latest_events_dir(tmp_path) is None
    runs = tmp_path / "runs"
    times = {"z_old": 1_000_000, "a_new/deeper": 3_000_000, "m_mid": 2_000_000}
    for name, mtime in times.items():
        (runs / name).mkdir(parents=True)
        f = runs / name / f"events.out.tfevents.{mtime}.host"
        f.write_bytes(b"")
        os.utime(f, (mtime, mtime))
    (runs / "no_events").mkdir()
    (runs / "no_events" / "notes.txt").write_text("not an events file")
    assert latest_events_dir(tmp_path) == runs / "a_new" / "deeper"


def test_resume_from_checkpoint_picks_or_refuses_in_one_line(tmp_path):
    """--resume_from_checkpoint: unset or false = a new run; true = the highest checkpoint with
    a trainer_state.json; a folder = that folder if it is a Trainer checkpoint, else one line;
    with --overwrite_output_dir it is refused."""

    def args(value):
        return SimpleNamespace(resume_from_checkpoint=value, output_dir=str(tmp_path))

    for ckpt in ("checkpoint-4", "checkpoint-12"):
        (tmp_path / ckpt).mkdir()
        (tmp_path / ckpt / "trainer_state.json").write_text('{"global_step": 1}')
    (tmp_path / "checkpoint-20").mkdir()  # no trainer state: not a checkpoint
    assert resolve_resume(args(None), overwrite=False) is None
    assert resolve_resume(args("false"), overwrite=False) is None
    assert resolve_resume(args("true"), overwrite=False) == tmp_path / "checkpoint-12"
    chosen = str(tmp_path / "checkpoint-4")
    assert resolve_resume(args(chosen), overwrite=False) == tmp_path / "checkpoint-4"
    not_one = str(tmp_path / "checkpoint-20")
    with pytest.raises(UsageError, match="is not a Trainer checkpoint folder") as err:
        resolve_resume(args(not_one), overwrite=False)
    assert repr(not_one) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError, match="cannot be combined with --overwrite_output_dir"):
        resolve_resume(args("true"), overwrite=True)


def test_rerun_command_drops_overwrite_and_resume_with_their_values(monkeypatch):
    """--overwrite_output_dir (bare, before another flag) and --resume_from_checkpoint with its
    value, or written --flag=value, leave the command; every other flag and value stays, the
    extra flags are appended; two processes make it an accelerate launch."""
    from hf_init.lm.run_folder import rerun_command

    monkeypatch.setattr(sys, "argv", ["scripts/pretrain.py"])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["--max_steps", "5", "--overwrite_output_dir", "--resume_from_checkpoint", "ck-3",
            "--seed", "1", "--resume_from_checkpoint=ck-4", "--overwrite_output_dir", "true",
            "--output_dir", "out dir"]  # fmt: skip
    assert rerun_command(argv, ["--report_to", "none"]) == (
        "python scripts/pretrain.py --max_steps 5 --seed 1 --output_dir 'out dir' --report_to none"
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rerun_command(["--overwrite_output_dir", "--seed", "2"], []).startswith(
        "accelerate launch scripts/pretrain.py --seed 2"
    )
