"""A pretraining run's folder (``--output_dir``) and its life: the names of its files, what it
holds, the check before a run writes into it, what a resume sets aside, what each checkpoint
carries, and what an unfinished or interrupted run tells the user (the exact command that
continues or restarts it). What ``run_info.json`` says is in :mod:`hf_init.lm.run_info`."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from hf_init.core.cli import RunStopped, UsageError
from hf_init.core.outputs import (
    check_output_dir,
    existing_outputs,
    kept_until_success,
    write_atomic,
)
from hf_init.core.records import split_at_step
from hf_init.lm.plots import plot_run

VARIANCE_FILE = "variance.jsonl"
RUN_INFO = "run_info.json"
DIVERGED = "diverged.json"  # written instead of run_info.json by a run that diverged
FIGURES_DIR = "figures"
TENSORBOARD_DIR = "runs"
MODEL_CARD = "README.md"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"  # the Trainer's file in every checkpoint
# the records an interrupted run wrote after the checkpoint a resume continues from (* = its step)
SET_ASIDE_FILES = "variance.after-step-*.interrupted.jsonl"


@dataclass(frozen=True)
class Part:
    """One thing a run folder can hold: its name in the printed summary, the entries it is made of
    (``*``: a glob), and whether finding it means the folder holds a run (a model card alone does
    not: it stays in place when a run is replaced)."""

    label: str
    entries: tuple[str, ...]
    marks_a_run: bool = True


#: What a run folder holds, in the order the summary prints it.
PARTS = (
    Part(
        "model",
        (
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "training_args.bin",
            TRAINER_STATE,
        ),
    ),
    Part("tokenizer", ("tokenizer.json", "tokenizer_config.json")),
    Part(VARIANCE_FILE, (VARIANCE_FILE,)),
    Part(f"{FIGURES_DIR}/", (FIGURES_DIR,)),
    Part(f"{TENSORBOARD_DIR}/ (TensorBoard)", (TENSORBOARD_DIR,)),
    Part(f"{CHECKPOINT_PREFIX}*/", (f"{CHECKPOINT_PREFIX}*",)),
    Part("records set aside by a resume", (SET_ASIDE_FILES,)),
    Part(RUN_INFO, (RUN_INFO,)),
    Part(DIVERGED, (DIVERGED,)),
    Part(f"{MODEL_CARD} (model card)", (MODEL_CARD,), marks_a_run=False),
)
#: Entries that mean "this folder already holds a run": everything a run writes but the card.
RUN_MARKERS = tuple(entry for part in PARTS if part.marks_a_run for entry in part.entries)


class RunFolder:
    """The folder of one pretraining run: where each file is and the steps of its life."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def records(self) -> Path:
        return self.path / VARIANCE_FILE

    @property
    def info(self) -> Path:
        return self.path / RUN_INFO

    @property
    def figures(self) -> Path:
        return self.path / FIGURES_DIR

    def checkpoint(self, step: int) -> Path:
        return self.path / f"{CHECKPOINT_PREFIX}{step}"

    @property
    def diverged(self) -> Path:
        return self.path / DIVERGED

    def is_finished(self) -> bool:
        """A run writes ``run_info.json`` last: without it the run did not finish."""
        return self.info.is_file()

    def has_ended(self) -> bool:
        """Finished, or stopped on divergence (``diverged.json``): running it again would end the
        same way, so a study does not."""
        return self.is_finished() or self.diverged.is_file()

    def read_info(self) -> dict:
        """``run_info.json``; for a run that diverged, ``diverged.json`` (the same description of
        the run, no results, and the step it diverged at)."""
        path = self.info if self.is_finished() else self.diverged
        return json.loads(path.read_text(encoding="utf-8"))

    def parts(self) -> list[str]:
        """The labels of the :data:`PARTS` the folder holds (a run reporting to no TensorBoard has
        no ``runs/``, one that saved no checkpoint no ``checkpoint-*/``)."""
        return [part.label for part in PARTS if existing_outputs(self.path, part.entries)]

    def last_checkpoint(self) -> Path | None:
        """The ``checkpoint-<step>`` folder with the highest step that has a trainer state."""
        best = None
        for p in self.path.glob(f"{CHECKPOINT_PREFIX}*") if self.path.is_dir() else []:
            tail = p.name[len(CHECKPOINT_PREFIX) :]
            if (
                tail.isdigit()
                and (p / TRAINER_STATE).is_file()
                and (best is None or int(tail) > best[0])
            ):
                best = (int(tail), p)
        return best[1] if best else None

    def check_new_run(self, overwrite: bool, argv: list[str]) -> list[str]:
        """Before a new run writes here: refuse a folder that already holds a run (any of
        :data:`RUN_MARKERS`) unless ``overwrite``, and one that cannot be written; returns what it
        holds. A run without ``run_info.json`` did not finish (interrupted, failed): the refusal
        says so and gives the command that continues or restarts it, built from ``argv``."""
        found = existing_outputs(self.path, RUN_MARKERS)
        if found and not overwrite and RUN_INFO not in found:
            raise UsageError(unfinished_run_message(self, found, argv))
        return check_output_dir(self.path, overwrite, RUN_MARKERS, flag="--overwrite_output_dir")

    def replacing(self, found: list[str], active: bool):
        """Context of a run that replaces the earlier run ``found`` here: that one is kept until
        the new run succeeds; a failed new run is kept too (its checkpoints may be hours of work).
        ``active``: the main process only. See :func:`hf_init.core.outputs.kept_until_success`."""
        return kept_until_success(self.path, found, active=active, keep_failed=True)

    def set_aside_records_after(self, step: int) -> tuple[str | None, int]:
        """Before a run resumed from the checkpoint of ``step`` appends to the records: move the
        lines the interrupted run wrote after that step (and any torn line) to the end of the
        side file, byte for byte, and rewrite the records (atomically) with the rest. Returns (the
        side file's name, or None when nothing was moved; the number of lines moved)."""
        up_to, after = split_at_step(self.records, step)
        if not after:
            return None, 0
        side = SET_ASIDE_FILES.replace("*", str(step))
        with open(self.path / side, "a", encoding="utf-8") as f:
            f.write("".join(after))
        write_atomic(self.records, lambda f: f.write("".join(up_to)))
        return side, len(after)

    def copy_records_to(self, checkpoint: Path, step: int) -> int:
        """Write the run's records up to ``step`` into ``checkpoint`` (whole lines, atomically);
        returns how many lines it holds."""
        up_to, _ = split_at_step(self.records, step)
        write_atomic(checkpoint / VARIANCE_FILE, lambda f: f.write("".join(up_to)))
        return len(up_to)


def checkpoint_step(checkpoint: Path) -> int:
    state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    return int(state["global_step"])


def latest_events_dir(out: Path) -> Path | None:
    """The folder of the most recently written TensorBoard events file under ``out/runs``."""
    events = sorted(
        (Path(out) / TENSORBOARD_DIR).rglob("events.out.tfevents.*"),
        key=lambda p: p.stat().st_mtime,
    )
    return events[-1].parent if events else None


def resolve_resume(training_args, overwrite: bool) -> Path | None:
    """``--resume_from_checkpoint``: ``true`` = the last checkpoint in --output_dir, else a
    checkpoint folder. One line if there is none or it is not a Trainer checkpoint."""
    value = training_args.resume_from_checkpoint
    if not value or str(value).lower() == "false":
        return None
    if overwrite:
        raise UsageError(
            "--resume_from_checkpoint continues the run in --output_dir; it cannot be combined "
            "with --overwrite_output_dir"
        )
    folder = RunFolder(training_args.output_dir)
    if str(value).lower() == "true":
        ckpt = folder.last_checkpoint()
        if ckpt is None:
            raise UsageError(
                f"--resume_from_checkpoint true: no {CHECKPOINT_PREFIX}<step> folder with a "
                f"{TRAINER_STATE} in {str(folder.path)!r}; save checkpoints with "
                f"--save_strategy steps --save_steps N"
            )
        return ckpt
    ckpt = Path(value)
    if not (ckpt / TRAINER_STATE).is_file():
        raise UsageError(
            f"--resume_from_checkpoint {str(value)!r} is not a Trainer checkpoint folder (no "
            f"{TRAINER_STATE}); pass a {CHECKPOINT_PREFIX}<step> folder or true (the last one "
            f"in --output_dir)"
        )
    return ckpt


def resume_from(folder: RunFolder, checkpoint: Path, main_process: bool) -> dict:
    """Start a run resumed from ``checkpoint``: on the main process, set aside the records the
    interrupted run wrote after it. Returns ``run_info.json``'s ``resumed_from``."""
    step = checkpoint_step(checkpoint)
    side, moved = folder.set_aside_records_after(step) if main_process else (None, 0)
    return {
        "checkpoint": str(checkpoint),
        "step": step,
        "set_aside_file": side,
        "set_aside_records": moved,
    }


def rerun_command(argv: list[str], extra: list[str]) -> str:
    """The command that ran ``argv``, without its --overwrite_output_dir /
    --resume_from_checkpoint (and their values), plus ``extra``: copy-pasteable."""
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


def unfinished_run_message(folder: RunFolder, found: list[str], argv: list[str]) -> str:
    held = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    where = str(folder.path)
    ckpt = folder.last_checkpoint()
    if ckpt is not None:
        resume = rerun_command(argv, ["--resume_from_checkpoint", "true"])
        return (
            f"output folder {where!r} holds a run that did not finish ({held}; no {RUN_INFO}), "
            f"last checkpoint {ckpt.name}; continue it with: {resume}"
            f"  (or replace it: add --overwrite_output_dir true)"
        )
    restart = rerun_command(argv, ["--overwrite_output_dir", "true"])
    return (
        f"output folder {where!r} holds a run that did not finish and has no checkpoint ({held}; "
        f"no {RUN_INFO}); restart it with: {restart}"
    )


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a cluster's time limit, ``kill``) arriving during a run, raised where the run is,
    as Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the body runs, SIGTERM stops the run like Ctrl-C (records flushed, one line, exit
    status 128 + 15, the command that continues it: see :func:`interrupted`). Python delivers
    signals to the main thread only; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupted(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def interrupted(
    folder: RunFolder, step: int, argv: list[str], err: KeyboardInterrupt
) -> RunStopped:
    """A run interrupted during training (``err``: Ctrl-C, or :class:`Interrupted` by SIGTERM):
    one line saying what is kept and how to continue; exit status 128 + the signal number."""
    signum = getattr(err, "signum", signal.SIGINT)
    return RunStopped(
        f"interrupted ({signal.Signals(signum).name}) at step {step}: records up to step {step} "
        f"are in {str(folder.records)!r}; {how_to_continue(folder, argv)}",
        code=128 + signum,
    )


def how_to_continue(folder: RunFolder, argv: list[str]) -> str:
    """The command that resumes the run in ``folder`` from its last checkpoint (or restarts it)."""
    ckpt = folder.last_checkpoint()
    if ckpt is not None:
        resume = rerun_command(argv, ["--resume_from_checkpoint", "true"])
        return f"continue from {ckpt.name} with: {resume}"
    restart = rerun_command(argv, ["--overwrite_output_dir", "true"])
    return f"no checkpoint to resume from; restart with: {restart}"


#: What a collective's error says when another rank is gone (its process or node died, or the
#: network failed): gloo's and NCCL's wordings.
PEER_LOST = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "NCCL communicator was aborted",
    "Watchdog caught collective operation timeout",
)


def lost_peer(err: BaseException, world_size: int) -> bool:
    """``err`` (raised by training) is a collective that failed because another rank is gone."""
    if world_size <= 1 or not isinstance(err, RuntimeError):
        return False
    return isinstance(err, torch.distributed.DistError) or any(m in str(err) for m in PEER_LOST)


def lost_peer_error(folder: RunFolder, step: int, rank: int, argv: list[str], err) -> RunStopped:
    """A rank whose collective failed because another rank is gone: one line saying so, what the
    failure said, what is kept and the command that continues the run on every node; exit 1."""
    reason = next((m for m in PEER_LOST if m in str(err)), None) or type(err).__name__
    return RunStopped(
        f"error: rank {rank} stopped at step {step}: another rank stopped answering ({reason}): "
        f"a process or node died, or the network failed; records and checkpoints up to the last "
        f"completed step are kept; {how_to_continue(folder, argv)} (the same launch on every node)",
        code=1,
    )


class RecordsInCheckpoints(TrainerCallback):
    """What a checkpoint carries besides the Trainer's files: on the main process, whenever a
    checkpoint is written (``on_save``) or about to be pushed to the Hub (``on_push_begin``, which
    the Trainer calls before ``on_save``), the run's records up to its step and their figures,
    drawn into the checkpoint and into the run folder's ``figures/`` (what the run-folder push
    uploads), each step once."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self._done: set[int] = set()

    def _snapshot(self, state) -> None:
        step = state.global_step
        ckpt = self.folder.checkpoint(step)
        if not state.is_world_process_zero or step in self._done or not ckpt.is_dir():
            return
        self._done.add(step)
        if self.folder.copy_records_to(ckpt, step):
            plot_run(ckpt / VARIANCE_FILE, ckpt / FIGURES_DIR)
            plot_run(ckpt / VARIANCE_FILE, self.folder.figures)

    def on_push_begin(self, args, state, control, **kwargs):
        self._snapshot(state)

    def on_save(self, args, state, control, **kwargs):
        self._snapshot(state)
