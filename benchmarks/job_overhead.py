"""What the pretraining job costs as users run it: ``hf_init.lm.pretrain.run`` (what
``scripts/pretrain.py`` runs) with every callback and sink it installs by default, against a plain
``transformers.Trainer`` on a stock ``GPT2LMHeadModel`` at the same shapes and with the same
``TrainingArguments``.

    PYTHONPATH=. python benchmarks/job_overhead.py                   # 12 x 128, blocks of 64
    PYTHONPATH=. python benchmarks/job_overhead.py --n_embd 256 --block_size 256 --steps 50 \\
        --variants plain default
    PYTHONPATH=. python benchmarks/job_overhead.py --profile 1       # a recording step's profile

Variants (``--variants``):

* ``plain``: stock ``GPT2LMHeadModel(GPT2Config(...))`` of the job's shape, random token blocks
  (a torch ``Dataset``), ``Trainer`` with the ``TrainingArguments`` the job parses from the same
  flags (configs/pretrain_tiny.yaml: AdamW, cosine, clipping 1.0, logging every 10 steps to
  TensorBoard); no callback of ours.
* ``default``: ``run()`` with its defaults: Q/K/V variances, attention probe and learning rate
  recorded every 10 steps (JSONL + TensorBoard), the divergence stop, records in checkpoints.
* ``every_step``: the same with ``--variance_steps 1``.
* ``every_step_no_probe``: ``--variance_steps 1 --attention_probe_blocks 0``.

Each round runs every variant once for ``--steps`` optimizer steps, in an order rotated from round
to round, after one short warm-up round. A variant's time is that of its ``Trainer.train`` call
per step, by the wall clock and by this process's CPU time (which does not count the time the
process waits for a core, so it resolves small differences on a machine shared with other jobs;
pin ``--threads 1`` there, as idle threads of a busy machine spin): training only (start-up, the
final evaluation and saving are not in it; the job's step-0 record is). Reported per variant and
clock: the median ms/step, and the median over rounds of its ratio to the plain Trainer's run in
the same round (paired, so slow drifts of the machine cancel) with the smallest and largest ratio
as its spread. The load average is printed before and after.

``--profile N``: one job run with ``--variance_steps N``, each recorder, sink and guard timed
where it runs: its share of ``Trainer.train``'s wall and CPU time, and its CPU time per call.
"""

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer

from hf_init.lm.args import parse_args
from hf_init.lm.pretrain import run

CLOCKS = ("wall time", "process CPU time")
VARIANTS = {
    "plain": None,
    "default": [],
    "every_step": ["--variance_steps", "1"],
    "every_step_no_probe": ["--variance_steps", "1", "--attention_probe_blocks", "0"],
}


class TokenBlocks(torch.utils.data.Dataset):
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def shape_flags(a) -> list[str]:
    return [
        "--n_layer", str(a.n_layer),
        "--n_embd", str(a.n_embd),
        "--block_size", str(a.block_size),
        "--disable_tqdm", "true",
    ]  # fmt: skip


@contextlib.contextmanager
def train_clock(calls: list):
    """Every ``Trainer.train`` call inside (the job's Trainer is a subclass) appends (wall
    seconds, this process's CPU seconds, optimizer steps) to ``calls``."""
    real = Trainer.train

    def train(trainer, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = real(trainer, *args, **kwargs)
        calls.append(
            (time.perf_counter() - wall, time.process_time() - cpu, trainer.state.max_steps)
        )
        return result

    Trainer.train = train
    try:
        yield
    finally:
        Trainer.train = real


def run_job(flags: list[str], steps: int, out: Path) -> None:
    """``run()`` for ``steps`` steps into ``out`` (its printed output muted)."""
    with contextlib.redirect_stdout(io.StringIO()):
        run([*flags, "--max_steps", str(steps), "--output_dir", str(out)])


def run_plain(flags: list[str], steps: int, out: Path) -> None:
    """A plain Trainer on a stock GPT2LMHeadModel with the TrainingArguments ``run()`` would parse
    from ``flags``, on random token blocks."""
    model_args, data_args, _, targs, _ = parse_args(
        [*flags, "--max_steps", str(steps), "--output_dir", str(out)]
    )
    config = GPT2Config(
        n_layer=model_args.n_layer,
        n_embd=model_args.n_embd,
        n_head=model_args.n_head,
        vocab_size=data_args.vocab_size,
        n_positions=data_args.block_size,
        resid_pdrop=model_args.dropout,
        embd_pdrop=model_args.dropout,
        attn_pdrop=model_args.dropout,
    )
    torch.manual_seed(targs.seed)
    rows = steps * targs.per_device_train_batch_size
    ids = torch.randint(0, data_args.vocab_size, (rows, data_args.block_size))
    trainer = Trainer(model=GPT2LMHeadModel(config), args=targs, train_dataset=TokenBlocks(ids))
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()


def per_step(variant: str, flags: list[str], steps: int, out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds per optimizer step of one ``variant`` run's ``Trainer.train``."""
    calls = []
    with train_clock(calls):
        if VARIANTS[variant] is None:
            run_plain(flags, steps, out)
        else:
            run_job([*flags, *VARIANTS[variant]], steps, out)
    ((wall, cpu, n),) = calls
    return wall / n, cpu / n


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def compare(a, flags: list[str]) -> None:
    """Interleaved rounds of every variant; the medians and paired ratios to the plain Trainer,
    for wall time and for this process's CPU time."""
    names = a.variants
    times = {clock: {name: [] for name in names} for clock in CLOCKS}
    ratios = {clock: {name: [] for name in names} for clock in CLOCKS}
    print(f"load average before: {load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(a.rounds + 1):  # round 0: a short warm-up, dropped
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            steps = a.steps if rnd else 10
            got = {name: per_step(name, flags, steps, Path(tmp, f"{rnd}-{name}")) for name in order}
            if not rnd:
                continue
            for name in names:
                for i, clock in enumerate(CLOCKS):
                    times[clock][name].append(got[name][i])
                    ratios[clock][name].append(got[name][i] / got["plain"][i])
            print(
                f"round {rnd} (wall / CPU ms per step): "
                + ", ".join(f"{n} {got[n][0] * 1e3:.1f} / {got[n][1] * 1e3:.1f}" for n in names),
                flush=True,
            )
    print(
        f"\nGPT-2 {a.n_layer} x {a.n_embd}, blocks of {a.block_size}, {a.rounds} interleaved "
        f"rounds of {a.steps} steps, torch threads {torch.get_num_threads()}, "
        f"load average after: {load()}"
    )
    for clock in CLOCKS:
        print(f"{clock}:")
        for name in names:
            r = ratios[clock][name]
            print(
                f"{name:>22}: median {statistics.median(times[clock][name]) * 1e3:7.1f} ms/step"
                f"   vs plain Trainer: median {statistics.median(r):.3f} "
                f"(rounds {min(r):.3f} - {max(r):.3f})"
            )


def parts():
    """What the job does besides training, by the methods that do it: (label, class, method)."""
    from hf_init.lm import guards, recorders, sinks
    from hf_init.lm.attention_probe import AttentionProbeCallback

    return [
        ("divergence stop (every step)", guards.DivergenceStop, "on_pre_optimizer_step"),
        ("Q/K/V gradient statistics", recorders.QKVVarianceCallback, "before_update"),
        ("Q/K/V weight statistics + records", recorders.QKVVarianceCallback, "measure"),
        ("attention probe", AttentionProbeCallback, "measure"),
        ("learning rate", recorders.LearningRateCallback, "measure"),
        ("records guard (non-finite variance)", sinks.NonFiniteRecords, "write"),
        ("JSONL sink", sinks.JsonlSink, "write"),
        ("TensorBoard: Q/K/V", sinks.TensorBoardSink, "write"),
        ("TensorBoard: attention", sinks.AttentionTensorBoardSink, "write"),
        ("TensorBoard: learning rate", sinks.WholeModelTensorBoardSink, "write"),
    ]


@contextlib.contextmanager
def timed_parts(spent: dict):
    """Each method of :func:`parts` timed while inside: ``spent[label]`` = [wall seconds, this
    process's CPU seconds, calls]."""
    saved = []
    for label, cls, name in parts():
        real = cls.__dict__[name]
        spent[label] = [0.0, 0.0, 0]

        def wrapper(*args, _real=real, _label=label, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return _real(*args, **kwargs)
            finally:
                spent[_label][0] += time.perf_counter() - wall
                spent[_label][1] += time.process_time() - cpu
                spent[_label][2] += 1

        saved.append((cls, name, real))
        setattr(cls, name, wrapper)
    try:
        yield
    finally:
        for cls, name, real in saved:
            setattr(cls, name, real)


def profile(a, flags: list[str]) -> None:
    """One job run recording every ``a.profile`` steps with each part timed: its share of the
    training (``Trainer.train``), wall and CPU time, and its CPU time per call."""
    spent: dict[str, list] = {}
    calls: list = []
    with tempfile.TemporaryDirectory() as tmp:
        run_job(flags, 10, Path(tmp, "warm"))
        with timed_parts(spent), train_clock(calls):
            run_job([*flags, "--variance_steps", str(a.profile)], a.steps, Path(tmp, "run"))
    ((wall, cpu, steps),) = calls
    print(
        f"GPT-2 {a.n_layer} x {a.n_embd}, blocks of {a.block_size}, {steps} steps recording "
        f"every {a.profile}, torch threads {torch.get_num_threads()}, load average {load()}: "
        f"{wall / steps * 1e3:.1f} ms/step wall, {cpu / steps * 1e3:.1f} ms/step CPU"
    )
    print(f"  {'part':<38} {'wall':>7} {'CPU':>7}   CPU per call")
    for label, (w, c, n) in spent.items():
        each = c / n * 1e3 if n else float("nan")
        print(f"  {label:<38} {w / wall:7.2%} {c / cpu:7.2%}   {each:7.2f} ms x {n}")
    w = sum(v[0] for v in spent.values())
    c = sum(v[1] for v in spent.values())
    print(f"  {'all of them':<38} {w / wall:7.2%} {c / cpu:7.2%}")


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice); 1 on a machine shared with others",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="time the parts of one run recording every N",
    )
    a = p.parse_args(argv)
    if "plain" not in a.variants:
        a.variants = ["plain", *a.variants]
    if a.threads:
        torch.set_num_threads(a.threads)
    flags = shape_flags(a)
    if a.profile:
        return profile(a, flags)
    return compare(a, flags)


if __name__ == "__main__":
    sys.exit(main())
