"""What the pretraining job costs as users run it, against the peer they would otherwise use: a
plain ``transformers.Trainer`` on a stock ``GPT2LMHeadModel`` of the same shape with the same
``TrainingArguments`` (configs/pretrain_tiny.yaml: AdamW, cosine, clipping 1.0, TensorBoard logging
every 10 steps). Rounds run each side once, in an order rotated from round to round, after a
warm-up round that is dropped; reported: medians, and the median and [min, max] of the per-round
ratio to the plain side (paired, so slow drifts of a shared machine cancel); the load average
before and after.

    PYTHONPATH=. python benchmarks/job_overhead.py --whole           # the whole command, 600 steps
    PYTHONPATH=. python benchmarks/job_overhead.py                   # Trainer.train alone
    PYTHONPATH=. python benchmarks/job_overhead.py --profile 1       # a recording step's profile

``--whole``, the whole command (start-up and outputs included): ``python scripts/pretrain.py``
with the shape flags and ``--max_steps`` (default: the config's 600) against
``benchmarks/plain_pretrain.py``, the same job written with plain transformers (the built-in
corpus, validation carve, blocks, final evaluation, ``save_model``), both as child processes and
both given one tokenizer trained beforehand (``--tokenizer_name``, as the init study does); the
warm-up round (10 steps) fills the datasets caches. Wall and CPU seconds of each process, and the
split into ``Trainer.train`` (as each reports it) and the rest. ``--threads`` sets both commands'
``OMP_NUM_THREADS``.

Training alone (default 150 steps): ``Trainer.train`` per step, wall and this process's CPU time
(which leaves out waiting for a core; pin ``--threads 1`` on a busy machine, where idle threads
spin), for ``--variants``: ``plain`` (the stock model on random token blocks, no callback of
ours); ``default`` (``hf_init.lm.pretrain.run`` as configured: Q/K/V variances, attention probe and
learning rate recorded every 10 steps to JSONL and TensorBoard, the divergence stop, records in
checkpoints); ``every_step`` (``--variance_steps 1``); ``every_step_no_probe`` (also
``--attention_probe_blocks 0``).

``--profile N``: one job run with ``--variance_steps N``, each recorder, sink and guard timed
where it runs: its share of ``Trainer.train``'s wall and CPU time, and its CPU time per call.
"""

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from callback_overhead import CLOCKS, TokenBlocks
from transformers import GPT2Config, GPT2LMHeadModel, Trainer

from hf_init.core.cli import read_yaml_config
from hf_init.lm.args import DEFAULT_CONFIG, parse_args
from hf_init.lm.pretrain import run

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "plain": None,
    "default": [],
    "every_step": ["--variance_steps", "1"],
    "every_step_no_probe": ["--variance_steps", "1", "--attention_probe_blocks", "0"],
}


def shape_flags(a) -> list[str]:
    return [
        "--n_layer", str(a.n_layer),
        "--n_embd", str(a.n_embd),
        "--block_size", str(a.block_size),
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


def prepare(flags: list[str], steps: int, tmp: Path) -> tuple[Path, dict[int, Path]]:
    """Train the tokenizer once into ``tmp/tokenizer`` (the init study's way) and write the plain
    command's spec for each step count (the warm-up's 10 and ``steps``) from the job's own parsed
    arguments. Returns (tokenizer folder, {steps: spec file})."""
    from hf_init.lm.data.builtin_corpus import builtin_dataset
    from hf_init.lm.data.loaders import load_raw_text
    from hf_init.lm.data.tokenizer import load_or_train_tokenizer

    tokenizer_dir = tmp / "tokenizer"
    _, data_args, _, _, _ = parse_args([*flags, "--output_dir", str(tmp / "unused")])
    raw, _ = load_raw_text(data_args)
    load_or_train_tokenizer(data_args, raw["train"]).save_pretrained(str(tokenizer_dir))
    corpus = Path(builtin_dataset(data_args.data_cache_dir).cache_files[0]["filename"]).parent
    specs = {}
    for n in (10, steps):
        model_args, data_args, _, targs, _ = parse_args(
            [*job_flags(flags, n, tmp / "unused", tokenizer_dir)]
        )
        training_args = targs.to_dict()
        training_args["hub_token"] = None  # to_dict writes a placeholder
        spec = {
            "corpus": str(corpus),
            "tokenizer": str(tokenizer_dir),
            "validation_percentage": data_args.validation_split_percentage,
            "split_seed": data_args.validation_split_seed,
            "block_size": data_args.block_size,
            "group_batch_size": data_args.group_batch_size,
            "train_blocks": data_args.max_train_samples,
            "eval_blocks": data_args.max_eval_samples,
            "model": {
                "n_layer": model_args.n_layer,
                "n_embd": model_args.n_embd,
                "n_head": model_args.n_head,
                "n_inner": model_args.n_inner,
                **model_args.dropouts(),
            },
            "training_args": training_args,
        }
        specs[n] = tmp / f"plain_spec_{n}.json"
        specs[n].write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return tokenizer_dir, specs


def job_flags(flags: list[str], steps: int, out: Path, tokenizer_dir: Path) -> list[str]:
    return [
        *flags,
        "--max_steps", str(steps),
        "--output_dir", str(out),
        "--tokenizer_name", str(tokenizer_dir),
    ]  # fmt: skip


def run_command(command: list[str], log: Path, env: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, its stdout) of one child process; its failure
    stops the benchmark with the end of its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.run(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{log.read_text(encoding='utf-8')[-3000:]}")
    return wall, cpu, proc.stdout


def whole(a, flags: list[str]) -> None:
    """Interleaved rounds of the two whole commands (see the module docstring)."""
    steps = a.steps or int(read_yaml_config(DEFAULT_CONFIG)["max_steps"])
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    names = ["job", "plain"]
    measures = ("whole wall", "whole CPU", "Trainer.train", "outside Trainer.train")
    got = {m: {name: [] for name in names} for m in measures}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer_dir, specs = prepare(flags, steps, tmp)
        print(f"load average before: {load()}", flush=True)
        for rnd in range(a.rounds + 1):  # round 0: 10 steps to fill the caches, dropped
            n = steps if rnd else 10
            row = {}
            for name in names[rnd % 2 :] + names[: rnd % 2]:
                out = tmp / f"{rnd}-{name}"
                if name == "job":
                    command = [sys.executable, "scripts/pretrain.py"]
                    command += job_flags(flags, n, out, tokenizer_dir)
                else:
                    command = [sys.executable, "benchmarks/plain_pretrain.py", str(specs[n])]
                    command += [str(out)]
                wall, cpu, stdout = run_command(command, tmp / f"{rnd}-{name}.log", env)
                if name == "job":
                    info = json.loads((out / "run_info.json").read_text(encoding="utf-8"))
                    train = info["train_runtime_s"]
                else:
                    train = json.loads(stdout.strip().splitlines()[-1])["train_runtime"]
                row[name] = (wall, cpu, train, wall - train)
            if not rnd:
                continue
            for name in names:
                for m, value in zip(measures, row[name]):
                    got[m][name].append(value)
            print(
                f"round {rnd} (whole wall / CPU / Trainer.train s): "
                + ", ".join(f"{n} {' / '.join(f'{v:.1f}' for v in row[n][:3])}" for n in names),
                flush=True,
            )
    print(
        f"\npython scripts/pretrain.py {' '.join(flags)} --max_steps {steps} (tokenizer given) vs "
        f"benchmarks/plain_pretrain.py: {a.rounds} interleaved rounds, "
        f"OMP_NUM_THREADS {env.get('OMP_NUM_THREADS', 'unset')}, load average after: {load()}"
    )
    for m in measures:
        r = [j / p for j, p in zip(got[m]["job"], got[m]["plain"])]
        print(
            f"{m:>22}: job median {statistics.median(got[m]['job']):7.1f} s, plain median "
            f"{statistics.median(got[m]['plain']):7.1f} s, job / plain: median "
            f"{statistics.median(r):.3f} [{min(r):.3f}, {max(r):.3f}]"
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
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps per run (default: 150; --whole: the config's max_steps, 600)",
    )
    p.add_argument(
        "--whole",
        action="store_true",
        help="time the whole commands (start-up and outputs included), job vs plain Trainer",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice; --whole: OMP_NUM_THREADS of both "
        "commands); 1 on a machine shared with others",
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
    if a.threads and not a.whole:
        torch.set_num_threads(a.threads)
    if a.whole and a.profile:
        p.error("--whole and --profile are separate measures: pass one")
    if a.whole:
        return whole(a, shape_flags(a))
    a.steps = a.steps or 150
    flags = [*shape_flags(a), "--disable_tqdm", "true"]
    if a.profile:
        return profile(a, flags)
    return compare(a, flags)


if __name__ == "__main__":
    sys.exit(main())
