"""Where a pretraining run stands on disk: its checkpoints, resuming from one, and what an
unfinished or interrupted run tells the user (the exact command that continues or restarts it)."""

from __future__ import annotations

import os
from pathlib import Path

from .cli import RunStopped, UsageError
from .run_report import RUN_INFO


def last_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step that has a ``trainer_state.json``."""
    folder = Path(folder)
    best = None
    for p in folder.glob("checkpoint-*") if folder.is_dir() else []:
        tail = p.name.rsplit("-", 1)[-1]
        if tail.isdigit() and (p / "trainer_state.json").is_file() and (best is None or int(tail) > best[0]):
            best = (int(tail), p)
    return best[1] if best else None


def checkpoint_step(checkpoint: Path) -> int:
    import json

    return int(json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])


def rerun_command(argv: list[str], extra: list[str]) -> str:
    """The command that ran ``argv``, without its --overwrite_output_dir / --resume_from_checkpoint
    (and their values), plus ``extra``: copy-pasteable."""
    import shlex
    import sys

    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            if not a.startswith("--"):
                continue
        name = a.split("=", 1)[0]
        if name in ("--overwrite_output_dir", "--resume_from_checkpoint"):
            skip = "=" not in a
            continue
        args.append(a)
    launcher = "accelerate launch" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "python"
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "scripts/pretrain.py"
    return f"{launcher} {shlex.join([script, *args, *extra])}"


def unfinished_run_message(out: Path, found: list[str], argv: list[str]) -> str:
    held = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    ckpt = last_checkpoint(out)
    if ckpt is not None:
        return (f"output folder {str(out)!r} holds a run that did not finish ({held}; no {RUN_INFO}), last "
                f"checkpoint {ckpt.name}; continue it with: {rerun_command(argv, ['--resume_from_checkpoint', 'true'])}"
                f"  (or replace it: add --overwrite_output_dir true)")
    return (f"output folder {str(out)!r} holds a run that did not finish and has no checkpoint ({held}; no "
            f"{RUN_INFO}); restart it with: {rerun_command(argv, ['--overwrite_output_dir', 'true'])}")


def resolve_resume(training_args, overwrite: bool) -> Path | None:
    """``--resume_from_checkpoint``: ``true`` = the last checkpoint in --output_dir, else a checkpoint
    folder. One line if there is none or it is not a Trainer checkpoint."""
    value = training_args.resume_from_checkpoint
    if not value or str(value).lower() == "false":
        return None
    if overwrite:
        raise UsageError("--resume_from_checkpoint continues the run in --output_dir; it cannot be combined "
                         "with --overwrite_output_dir")
    out = Path(training_args.output_dir)
    if str(value).lower() == "true":
        ckpt = last_checkpoint(out)
        if ckpt is None:
            raise UsageError(f"--resume_from_checkpoint true: no checkpoint-<step> folder with a trainer_state.json "
                             f"in {str(out)!r}; save checkpoints with --save_strategy steps --save_steps N")
        return ckpt
    ckpt = Path(value)
    if not (ckpt / "trainer_state.json").is_file():
        raise UsageError(f"--resume_from_checkpoint {str(value)!r} is not a Trainer checkpoint folder (no "
                         f"trainer_state.json); pass a checkpoint-<step> folder or true (the last one in --output_dir)")
    return ckpt


def interrupted(out: Path, step: int, argv: list[str]) -> RunStopped:
    """SIGINT or SIGTERM (see scripts/pretrain.py) during training: one line saying what is kept
    and how to continue; exit status 128 + the signal number."""
    import signal

    signum = int(os.environ.get("HF_INIT_SIGNAL", signal.SIGINT))
    ckpt = last_checkpoint(out)
    how = (f"continue from {ckpt.name} with: {rerun_command(argv, ['--resume_from_checkpoint', 'true'])}"
           if ckpt is not None else f"no checkpoint to resume from; restart with: "
                                    f"{rerun_command(argv, ['--overwrite_output_dir', 'true'])}")
    return RunStopped(f"interrupted ({signal.Signals(signum).name}) at step {step}: records up to step {step} are "
                      f"in {str(out / 'variance.jsonl')!r}; {how}", code=128 + signum)


def latest_events_dir(out: Path) -> Path | None:
    """The folder of the most recently written TensorBoard events file under ``out/runs``."""
    events = sorted((out / "runs").rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    return events[-1].parent if events else None
