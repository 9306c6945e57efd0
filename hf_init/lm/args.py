"""The pretraining job's arguments: the dataclasses behind ``scripts/pretrain.py``'s YAML keys and
flags, each with its checks in ``__post_init__`` (bad input is refused while parsing, before
anything is read or written), and :func:`parse_args`.

The built-in default config, ``hf_init/configs/pretrain_tiny.yaml``, ships inside the package
(package data), so it is found from an installed copy too; a user YAML is applied on top of it
(see :func:`hf_init.core.cli.parse_yaml_and_cli`).

transformers is imported only once the flag names have been checked (:func:`check_flags`) and
``--help`` answered (:func:`help_text`): both read ``TrainingArguments``' fields from its source,
so they answer in a fraction of a second; :class:`PretrainTrainingArguments` is made on first use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hf_init.core.cli import (
    CONFIGS_DIR,
    UsageError,
    check_flag_names,
    dataclass_flags,
    format_flag_help,
    parse_yaml_and_cli,
    read_yaml_config,
)
from hf_init.lm.data.args import DataArguments

DEFAULT_CONFIG = CONFIGS_DIR / "pretrain_tiny.yaml"
# the spike monitor's defaults, OLMo-core's (why: hf_init.lm.spikes); here, where no torch is loaded
SPIKE_WINDOW = 128
SPIKE_THRESHOLD = 6.0


@dataclass
class ModelArguments:
    """The GPT-2 architecture and its init scheme (recorded in the saved config.json)."""

    init_scheme: str = field(
        default="gpt2", metadata={"help": "init scheme (see hf_init.core.schemes.SCHEMES)"}
    )
    init_std: float | None = field(
        default=None, metadata={"help": "std of every weight (scheme `normal`), > 0"}
    )
    init_fan_mode: str = field(default="fan_in", metadata={"help": "kaiming_*: fan_in or fan_out"})
    init_nonlinearity: str = field(
        default="relu", metadata={"help": "kaiming_*: gain of this nonlinearity"}
    )
    init_gain: float = field(default=1.0, metadata={"help": "xavier_*: gain multiplying the std"})
    initializer_range: float = field(
        default=0.02, metadata={"help": "GPT-2's r (scheme gpt2, embeddings)"}
    )
    n_layer: int = field(default=12, metadata={"help": "number of transformer blocks"})
    n_embd: int = field(default=128, metadata={"help": "residual width"})
    n_head: int = field(default=4, metadata={"help": "attention heads (must divide n_embd)"})
    dropout: float = field(default=0.0, metadata={"help": "resid/embd/attn dropout"})

    def __post_init__(self):
        # the same checks make_config applies, on these fields directly (they carry the config's names)
        from hf_init.lm.modeling import _check_shape, validate_init_config

        if not 0 <= self.dropout < 1:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout}")
        _check_shape({"n_layer": self.n_layer, "n_embd": self.n_embd, "n_head": self.n_head})
        validate_init_config(self)
        self._refuse_unused_options()

    def _refuse_unused_options(self) -> None:
        """An option the scheme does not read would be recorded (config.json, run_info.json) as if
        it had shaped the weights: refuse it in one line naming what the scheme does read."""
        from hf_init.core.schemes import SCHEME_OPTIONS, unused_options
        from hf_init.lm.modeling import _OPTION_ATTRS, scheme_options

        flag = {
            opt: attr for attr, opt in _OPTION_ATTRS.items()
        }  # SchemeOptions field -> flag name
        unused = unused_options(self.init_scheme, scheme_options(self))
        if unused:
            used = [flag[o] for o in SCHEME_OPTIONS[self.init_scheme]]
            readers = sorted(n for n, opts in SCHEME_OPTIONS.items() if unused[0] in opts)
            raise UsageError(
                f"init scheme {self.init_scheme!r} does not use {', '.join('--' + flag[o] for o in unused)} "
                f"(it reads {', '.join('--' + u for u in used) or 'no option'}); drop it, or pick a scheme "
                f"that reads --{flag[unused[0]]}: {', '.join(readers)}"
            )


@dataclass
class RunArguments:
    """What this script adds around the Trainer."""

    variance_steps: int | None = field(
        default=None,
        metadata={"help": "record Q/K/V variance every N optimizer steps (default: logging_steps)"},
    )
    attention_probe_blocks: int = field(
        default=4,
        metadata={"help": "held-out blocks in the attention probe batch (0: no attention records)"},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace a run already in output_dir (otherwise refuse)"}
    )
    spike_window: int = field(
        default=SPIKE_WINDOW,
        metadata={"help": "spike monitor: z-scores over the last N steps' loss and grad norm"},
    )
    spike_threshold: float = field(
        default=SPIKE_THRESHOLD,
        metadata={"help": "spike monitor: a step is a spike above this z-score"},
    )
    skip_spike_updates: bool = field(
        default=False,
        metadata={"help": "do not apply the update of a step whose gradient norm is a spike"},
    )

    def __post_init__(self):
        if self.variance_steps is not None and self.variance_steps < 1:
            raise UsageError(f"variance_steps must be >= 1, got {self.variance_steps}")
        if self.attention_probe_blocks < 0:
            raise UsageError(
                f"attention_probe_blocks must be >= 0, got {self.attention_probe_blocks}"
            )
        if self.spike_window < 2:
            raise UsageError(f"spike_window must be >= 2 steps, got {self.spike_window}")
        if not (math.isfinite(self.spike_threshold) and self.spike_threshold > 0):
            raise UsageError(
                f"spike_threshold must be a finite number > 0, got {self.spike_threshold}"
            )

    def spikes(self) -> dict:
        """The spike monitor's settings (:class:`hf_init.lm.spikes.SpikeMonitor`)."""
        return {
            "window": self.spike_window,
            "threshold": self.spike_threshold,
            "skip_updates": self.skip_spike_updates,
        }


def _training_arguments_class():
    """:class:`PretrainTrainingArguments`, defined on first use (it subclasses transformers'
    ``TrainingArguments``, whose import takes seconds) as ``hf_init.lm.args.PretrainTrainingArguments``
    (so ``training_args.bin`` unpickles)."""
    if "PretrainTrainingArguments" in globals():
        return globals()["PretrainTrainingArguments"]
    from transformers import TrainingArguments

    @dataclass
    class PretrainTrainingArguments(TrainingArguments):
        """``TrainingArguments`` whose optimizer, schedule and batch values are checked when parsed:
        torch or the Trainer would only reject them once training (or the final evaluation) is under way."""

        def __post_init__(self):
            super().__post_init__()
            for name in (
                "per_device_train_batch_size",
                "per_device_eval_batch_size",
                "gradient_accumulation_steps",
            ):
                if getattr(self, name) < 1:
                    raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
            self._finite("learning_rate", 0)
            self._finite("weight_decay", 0)
            self._finite("adam_beta1", 0, high=1)
            self._finite("adam_beta2", 0, high=1)
            self._finite("adam_epsilon", 0)
            self._finite("max_grad_norm", 0)
            if self.warmup_steps < 0:
                raise UsageError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
            if self.max_steps <= 0:
                if self.max_steps != -1:
                    raise UsageError(
                        f"max_steps must be >= 1 (or -1: train for num_train_epochs), got {self.max_steps}"
                    )
                self._finite("num_train_epochs", 0, strict=True)
            self._check_report_to()
            # --resume_from_checkpoint (true or a checkpoint folder) is checked against the output folder
            # before anything is written: hf_init.lm.run_folder.resolve_resume

        def _check_report_to(self) -> None:
            """An integration whose package is missing: one line now, not the Trainer's traceback later."""
            from transformers.integrations import get_available_reporting_integrations

            available = get_available_reporting_integrations()
            missing = [r for r in (self.report_to or []) if r not in available]
            if missing:
                raise UsageError(
                    f"--report_to {missing[0]}: its package is not installed (pip install {missing[0]}); "
                    f"installed here: {', '.join(available) or 'none'} (or --report_to none)"
                )

        def _finite(
            self, name: str, low: float, strict: bool = False, high: float | None = None
        ) -> None:
            v = getattr(self, name)
            ok = (
                v is not None
                and math.isfinite(v)
                and (v > low if strict else v >= low)
                and (high is None or v < high)
            )
            if not ok:
                allowed = f"{'>' if strict else '>='} {low}" + (
                    f" and < {high}" if high is not None else ""
                )
                raise UsageError(f"{name} must be a finite number {allowed}, got {v}")

    PretrainTrainingArguments.__qualname__ = "PretrainTrainingArguments"  # pickled by this name
    globals()["PretrainTrainingArguments"] = PretrainTrainingArguments
    return PretrainTrainingArguments


def __getattr__(name: str):
    if name == "PretrainTrainingArguments":
        return _training_arguments_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Where the Trainer's flags come from (read from source by the quick path, never imported there).
TRAINING_ARGUMENTS_SOURCE = ("transformers.training_args", "TrainingArguments")


def _flag_groups():
    from hf_init.core.cli import source_dataclass_flags

    return [
        ("model", dataclass_flags(ModelArguments)),
        ("data", dataclass_flags(DataArguments)),
        ("run", dataclass_flags(RunArguments)),
        (
            "training (transformers TrainingArguments)",
            source_dataclass_flags(*TRAINING_ARGUMENTS_SOURCE),
        ),
    ]


def flag_names() -> set[str]:
    """Every flag name of the script (without ``--``), from the dataclasses, importing nothing heavy."""
    return {name for _, flags in _flag_groups() for name, _, _ in flags}


def help_text() -> str:
    """The flags, each with its help and its default (the built-in YAML's value where it sets one)."""
    return "usage: scripts/pretrain.py [config.yaml] [--flag value ...]" + format_flag_help(
        _flag_groups(), read_yaml_config(DEFAULT_CONFIG)
    )


def check_flags(argv: list[str]) -> None:
    """One line for a flag no dataclass declares, before transformers is imported."""
    check_flag_names(argv, flag_names())


def build_parser():
    from transformers import HfArgumentParser

    return HfArgumentParser(
        (ModelArguments, DataArguments, RunArguments, _training_arguments_class()),
        allow_abbrev=False,
    )


def accelerator_available() -> bool:
    """A CUDA, XPU or MPS device is present (otherwise training runs on the CPU)."""
    import torch

    return bool(
        torch.cuda.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
        or torch.backends.mps.is_available()
    )


def parse_args(argv: list[str]):
    """``[config.yaml] [--flag value ...]`` on top of :data:`DEFAULT_CONFIG`. Returns
    ``(model_args, data_args, run_args, training_args, config_path)``; bad values raise
    :class:`~hf_init.core.cli.UsageError` (one line)."""
    check_flags(argv)
    parser = build_parser()
    if not accelerator_available():
        # Without use_cpu, TrainingArguments under `accelerate launch --multi_gpu` on a machine with
        # no GPU inits a process group but trains every rank alone (world size 1, both writing the
        # same files). use_cpu=True makes accelerate pick MULTI_CPU with gloo: real DDP.
        parser.set_defaults(use_cpu=True)
    (model_args, data_args, run_args, training_args), config_path = parse_yaml_and_cli(
        parser, argv, default_config=DEFAULT_CONFIG
    )
    if run_args.skip_spike_updates and training_args.fp16:
        raise UsageError(
            "--skip_spike_updates cannot skip an update under --fp16 (its loss scaler steps the "
            "optimizer itself); use --bf16, or drop --skip_spike_updates"
        )
    return model_args, data_args, run_args, training_args, config_path


def model_config(model_args: ModelArguments, vocab_size: int, n_positions: int, tokenizer=None):
    """The GPT2Config (init scheme validated by ``make_config``), special token ids from the tokenizer."""
    from hf_init.lm.modeling import make_config

    kwargs = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name, None) is not None:
            kwargs[name] = getattr(tokenizer, name)
    return make_config(
        init_scheme=model_args.init_scheme,
        init_std=model_args.init_std,
        init_fan_mode=model_args.init_fan_mode,
        init_nonlinearity=model_args.init_nonlinearity,
        init_gain=model_args.init_gain,
        initializer_range=model_args.initializer_range,
        n_layer=model_args.n_layer,
        n_embd=model_args.n_embd,
        n_head=model_args.n_head,
        vocab_size=vocab_size,
        n_positions=n_positions,
        resid_pdrop=model_args.dropout,
        embd_pdrop=model_args.dropout,
        attn_pdrop=model_args.dropout,
        **kwargs,
    )
