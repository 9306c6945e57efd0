"""The init-scheme study behind ``scripts/init_study.py``: one pretraining config over init schemes
x seeds (x optional learning rates, schedules, warm-up lengths and optimizers), every run in its
own folder of one study folder (one TensorBoard logdir), then the report (:mod:`hf_init.report`).

Shared across runs: the data (the same corpus, split and blocks), the tokenizer (trained once
into ``<study>/tokenizer`` and passed to every run as ``--tokenizer_name``) and the seeds (seed
``i`` of every scheme uses the same ``--seed i``: the same data order). A run whose folder holds
``run_info.json`` (finished) or ``diverged.json`` (stopped on non-finite values; the study goes
on with the next run) has ended and is skipped, so re-running the study command continues it; a
run folder without either (an interrupted run) is replaced. Runs go one after the other in this
process (no repeated start-up). Every flag that is not the study's goes to
every run: ``--model_type llama`` (with ``--n_kv_head``, ``--n_inner``) makes it a study of Llamas.
"""

from __future__ import annotations

import itertools
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hf_init.core.cli import CONFIGS_DIR, UsageError, parse_yaml_and_cli
from hf_init.lm.run_folder import TENSORBOARD_DIR, RunFolder

DEFAULT_CONFIG = CONFIGS_DIR / "init_study.yaml"
STUDY_FILE = "study.json"
TOKENIZER_DIR = "tokenizer"
DEFAULT_SCHEMES = [
    "gpt2",
    "depth_scaled",
    "xavier_normal",
    "kaiming_normal",
    "small_init",
    "deepnet",
]
DEFAULT_SEEDS = 5  # the fewest with which the sign-flip test can reach p <= 0.05 (1/2^5)
# keys of an --optimizers entry that set a run flag of their own; the others go to --optim_args
OPTIMIZER_FLAGS = {"lr": "--learning_rate", "weight_decay": "--weight_decay"}
# set per run by the study: passing them through would be silently overridden
STUDY_OWNED_FLAGS = (
    "init_scheme",
    "init_std",
    "seed",
    "output_dir",
    "tokenizer_name",
    "overwrite_output_dir",
)


@dataclass
class StudyArguments:
    """What the study adds around the pretraining script; every other flag goes to each run."""

    schemes: list[str] = field(
        default_factory=lambda: list(DEFAULT_SCHEMES),
        metadata={
            "help": "init schemes (hf_init.core.schemes); `normal:STD` is scheme normal with that "
            "std for every weight (no residual scaling)"
        },
    )
    seeds: int = field(
        default=DEFAULT_SEEDS, metadata={"help": "seeds 0..N-1, the same for every scheme"}
    )
    learning_rates: list[float] | None = field(
        default=None,
        metadata={
            "help": "cross every scheme and seed with these learning rates "
            "(default: the config's one)"
        },
    )
    lr_scheduler_types: list[str] | None = field(
        default=None,
        metadata={
            "help": "cross with these schedules, e.g. cosine constant_with_warmup "
            "(constant LR after warmup)"
        },
    )
    warmups: list[int] | None = field(
        default=None, metadata={"help": "cross with these --warmup_steps (e.g. 15 150)"}
    )
    optimizers: list[str] | None = field(
        default=None,
        metadata={
            "help": "cross with these optimizers, each NAME[:key=value,...]: NAME a Trainer "
            "--optim (adamw_torch, sgd, ...); keys lr and weight_decay set that run's "
            "--learning_rate and --weight_decay, the others go to --optim_args, e.g. "
            "sgd:momentum=0.9,lr=0.3"
        },
    )
    run_flags: list[str] | None = field(
        default=None,
        metadata={
            "help": "flags given to every run before those of the command line (for a study "
            "YAML, e.g. [--max_steps, 1200]; on the command line pass the flags themselves)"
        },
    )
    pretrain_config: str = field(
        default=str(CONFIGS_DIR / "init_study_pretrain.yaml"),
        metadata={
            "help": "YAML config of scripts/pretrain.py used for every run "
            "(flags not listed here override it)"
        },
    )
    output_dir: str = field(default="outputs/init_study", metadata={"help": "the study folder"})
    report: bool = field(
        default=True, metadata={"help": "write report.html / report.md at the end"}
    )
    threads: int = field(
        default=1,
        metadata={
            "help": "torch CPU threads (default 1: 2 threads were 3-10x slower per step on a busy "
            "2-core machine; 0 = torch's choice)"
        },
    )

    def __post_init__(self):
        from hf_init.core.schemes import get_scheme

        if self.threads < 0:
            raise UsageError(f"threads must be >= 0 (0 = torch's choice), got {self.threads}")
        if self.seeds < 1:
            raise UsageError(f"seeds must be >= 1, got {self.seeds}")
        if not self.schemes:
            raise UsageError("schemes must name at least one init scheme")
        for spec in self.schemes:
            name, std = parse_scheme(spec)
            get_scheme(name)  # ValueError listing the valid names
        for lr in self.learning_rates or []:
            if not (math.isfinite(lr) and lr > 0):
                raise UsageError(f"learning_rates must be finite and > 0, got {lr}")
        if self.lr_scheduler_types:
            from transformers.trainer_utils import SchedulerType

            valid = [s.value for s in SchedulerType]
            bad = [s for s in self.lr_scheduler_types if s not in valid]
            if bad:
                raise UsageError(f"unknown lr_scheduler_types {bad}; valid: {', '.join(valid)}")
        if any(w < 0 for w in self.warmups or []):
            raise UsageError(f"warmups must be >= 0, got {self.warmups}")
        for spec in self.optimizers or []:
            _, flags = parse_optimizer(spec)
            if self.learning_rates and "--learning_rate" in flags:
                raise UsageError(
                    f"optimizer {spec!r} sets its lr and --learning_rates crosses learning rates: "
                    "give one or the other"
                )


def parse_scheme(spec: str) -> tuple[str, float | None]:
    """``gpt2`` -> (gpt2, None); ``normal:0.02`` -> (normal, 0.02)."""
    name, _, std = spec.partition(":")
    if not std:
        if name == "normal":
            raise UsageError("scheme `normal` needs its std: write normal:STD, e.g. normal:0.02")
        return name, None
    try:
        value = float(std)
    except ValueError:
        raise UsageError(
            f"bad std in scheme {spec!r}: write NAME:STD with a number, e.g. normal:0.02"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"the std in scheme {spec!r} must be finite and > 0")
    return name, value


def parse_optimizer(spec: str) -> tuple[str, list[str]]:
    """``sgd:momentum=0.9,lr=0.3`` -> (label ``sgd_momentum0.9_lr0.3``, the run flags ``--optim
    sgd --optim_args momentum=0.9 --learning_rate 0.3``); UsageError on a bad entry."""
    from transformers.training_args import OptimizerNames

    name, _, rest = spec.partition(":")
    valid = [o.value for o in OptimizerNames]
    if name not in valid:
        raise UsageError(f"unknown optimizer {name!r} in {spec!r}; valid: {', '.join(valid)}")
    pairs = [p.partition("=") for p in rest.split(",")] if rest else []
    if any(not k or not sep or not v for k, sep, v in pairs):
        raise UsageError(f"bad optimizer {spec!r}: write NAME:key=value,... e.g. {_SGD_EXAMPLE}")
    flags, optim_args = ["--optim", name], []
    for key, _, value in pairs:
        if key in OPTIMIZER_FLAGS:
            number = _positive_number(value, f"{key} in optimizer {spec!r}", key == "lr")
            flags += [OPTIMIZER_FLAGS[key], repr(number)]
        else:
            optim_args.append(f"{key}={value}")
    if optim_args:
        flags += ["--optim_args", ",".join(optim_args)]
    label = "_".join([name, *(k + v for k, _, v in pairs)])
    return label, flags


_SGD_EXAMPLE = "sgd:momentum=0.9,lr=0.3"


def _positive_number(text: str, what: str, strict: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (strict and value == 0):
        raise UsageError(f"{what} must be a finite number {'>' if strict else '>='} 0, got {text}")
    return value


def split_argv(argv: list[str], study_flags: set[str]) -> tuple[list[str], list[str]]:
    """(study argv, pretraining argv): an optional leading YAML goes to the study; each ``--flag``
    (with ``=value`` or the values after it) goes to the study if it is one of ``study_flags``."""
    argv = list(argv)
    study = [argv.pop(0)] if argv and argv[0].endswith((".yaml", ".yml")) else []
    pretrain: list[str] = []
    target = pretrain
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0]
            target = study if name in study_flags else pretrain
        target.append(token)
    return study, pretrain


def parse_study_args(argv: list[str]) -> tuple[StudyArguments, list[str]]:
    """(study arguments, the flags passed to every run). Bad input raises UsageError."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(StudyArguments)
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    study_argv, pretrain_argv = split_argv(argv, flags | {"help"})
    (study,), _ = parse_yaml_and_cli(parser, study_argv, default_config=DEFAULT_CONFIG)
    owned = [
        t
        for t in [*(study.run_flags or []), *pretrain_argv]
        if t.startswith("--") and t[2:].split("=", 1)[0] in STUDY_OWNED_FLAGS
    ]
    if owned:
        raise UsageError(
            f"{', '.join(owned)} is set by the study for each run; use --schemes (NAME or "
            f"normal:STD), --seeds and --output_dir"
        )
    return study, pretrain_argv


@dataclass
class PlannedRun:
    name: str
    scheme: str
    init_std: float | None
    seed: int
    learning_rate: float | None
    lr_scheduler_type: str | None
    warmup_steps: int | None = None
    optimizer: str | None = None  # an --optimizers entry

    def argv(self, study: StudyArguments, passthrough: list[str], out: Path) -> list[str]:
        args = [
            study.pretrain_config,
            *(study.run_flags or []),
            *passthrough,
            "--init_scheme",
            self.scheme,
            "--seed",
            str(self.seed),
            "--output_dir",
            str(out / self.name),
            "--tokenizer_name",
            str(out / TOKENIZER_DIR),
        ]
        if self.init_std is not None:
            args += ["--init_std", repr(self.init_std)]
        if self.learning_rate is not None:
            args += ["--learning_rate", repr(self.learning_rate)]
        if self.lr_scheduler_type is not None:
            args += ["--lr_scheduler_type", self.lr_scheduler_type]
        if self.warmup_steps is not None:
            args += ["--warmup_steps", str(self.warmup_steps)]
        if self.optimizer is not None:
            args += parse_optimizer(self.optimizer)[1]
        return args


def plan(study: StudyArguments) -> list[PlannedRun]:
    """Every run of the study, scheme-major within each seed (seed 0 of every scheme and setting
    first, so an interrupted study has whole seeds). A run's name is its scheme, the crossed
    settings it has (lr, schedule, warm-up ``wu``, optimizer) and its seed."""
    runs = []
    crossed = itertools.product(
        range(study.seeds),
        study.learning_rates or [None],
        study.lr_scheduler_types or [None],
        study.warmups or [None],
        study.optimizers or [None],
        study.schemes,
    )
    for seed, lr, sched, warmup, optimizer, spec in crossed:
        name, std = parse_scheme(spec)
        parts = [name if std is None else f"{name}_std{std:g}"]
        parts += [f"lr{lr:g}"] if lr is not None else []
        parts += [sched] if sched else []
        parts += [f"wu{warmup}"] if warmup is not None else []
        parts += [parse_optimizer(optimizer)[0]] if optimizer else []
        run_name = "_".join(parts) + f"_seed{seed}"
        runs.append(PlannedRun(run_name, name, std, seed, lr, sched, warmup, optimizer))
    return runs


def prepare_tokenizer(study: StudyArguments, passthrough: list[str], out: Path) -> None:
    """Train the tokenizer once (from the config's data arguments) into ``<study>/tokenizer``,
    unless it is there already. Every run then loads it."""
    from hf_init.lm.args import parse_args

    target = out / TOKENIZER_DIR
    if (target / "tokenizer.json").exists():
        return
    _, data_args, _, _, _ = parse_args(
        [study.pretrain_config, *passthrough, "--output_dir", str(out / ".check")]
    )
    from hf_init.lm.data.loaders import load_raw_text
    from hf_init.lm.data.tokenizer import load_or_train_tokenizer

    raw, _ = load_raw_text(data_args)
    tokenizer = load_or_train_tokenizer(data_args, raw["train"])
    tokenizer.save_pretrained(str(target))


def write_hparams(run_dir: Path, run: PlannedRun, info: dict) -> None:
    """An HParams entry in the run's own TensorBoard folder (the Trainer's ``logging_dir``), so
    the dashboard links the run's hyperparameters to its curves."""
    from torch.utils.tensorboard import SummaryWriter

    logging_dir = info["config"]["training"].get("logging_dir") or str(run_dir / TENSORBOARD_DIR)
    training = info["config"]["training"]
    hparams = {
        "model_type": info["config"]["model"].get("model_type", "gpt2"),
        "scheme": run.scheme,
        "init_std": run.init_std if run.init_std is not None else float("nan"),
        "seed": run.seed,
        "learning_rate": training["learning_rate"],
        "lr_scheduler_type": str(training["lr_scheduler_type"]),
        "warmup_steps": training["warmup_steps"],
        "optim": str(training["optim"]),
    }
    metrics = {
        "hparam/eval_loss": info["eval_loss"],
        "hparam/perplexity": info["perplexity"],
        "hparam/next_token_accuracy": info.get("next_token_accuracy") or float("nan"),
    }
    with SummaryWriter(log_dir=logging_dir) as writer:
        writer.add_hparams(hparams, metrics, run_name=".")


def run_study(argv: list[str]) -> Path:
    study, passthrough = parse_study_args(argv)
    from hf_init.core.outputs import write_json
    from hf_init.lm.args import parse_args

    out = Path(study.output_dir)
    runs = plan(study)
    # every setting's arguments are checked (seed 0 of each) before anything is trained or written
    for run in runs:
        if run.seed == 0:
            parse_args(run.argv(study, passthrough, out))
    out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/init_study.py " + " ".join(shlex.quote(a) for a in argv)
    write_json(
        out / STUDY_FILE,
        {
            "command": command,
            "study": study.__dict__,
            "passthrough": passthrough,
            "runs": [r.__dict__ for r in runs],
        },
    )
    t0 = time.time()
    if study.threads:
        import torch

        torch.set_num_threads(study.threads)
    prepare_tokenizer(study, passthrough, out)
    for i, run in enumerate(runs, 1):
        run_one(f"[{i}/{len(runs)}] {run.name}", run, run.argv(study, passthrough, out), t0)
    if study.report:
        from hf_init.report import write_report

        paths = write_report([out], out)
        print(f"report: {', '.join(str(p) for p in paths)}")
    print(
        f"study of {len(runs)} runs in {out} ({time.time() - t0:.0f} s); "
        f"tensorboard --logdir {out}",
        file=sys.stderr,
    )
    return out


def run_one(tag: str, run: PlannedRun, args: list[str], t0: float) -> None:
    """One run of the study, unless it has ended earlier (finished or diverged). An interrupted
    run is started again; one that diverges is left with its ``diverged.json`` and the study goes
    on."""
    from hf_init.lm.guards import Diverged
    from hf_init.lm.pretrain import run as pretrain_run

    folder = RunFolder(args[args.index("--output_dir") + 1])
    if folder.has_ended():
        ended = "finished" if folder.is_finished() else "diverged"
        print(f"{tag}: {ended} earlier, skipped", flush=True)
        return
    started = time.time()
    if folder.path.exists():  # an interrupted run: start it again
        args = [*args, "--overwrite_output_dir"]
    print(f"{tag}: python scripts/pretrain.py {shlex.join(args)}", flush=True)
    try:
        info = pretrain_run(args, started=started)
    except Diverged as err:
        print(f"{tag}: {err}; the study goes on", flush=True)
        return
    write_hparams(folder.path, run, info)
    print(
        f"{tag}: eval loss {info['eval_loss']:.4f} "
        f"in {time.time() - started:.0f} s (study {time.time() - t0:.0f} s)",
        flush=True,
    )
