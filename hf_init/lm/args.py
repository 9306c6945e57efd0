"""The pretraining job's arguments: the dataclasses behind ``scripts/pretrain.py``'s YAML keys and
flags and transformers' ``TrainingArguments``, all checked while parsing (:func:`parse_args`),
before anything is read or written.

The built-in config, ``hf_init/configs/pretrain_tiny.yaml``, ships in the package; a user YAML goes
on top of it. ``--help`` reads the dataclasses' source (:func:`help_text`): it imports no
transformers, so it answers at once.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

from hf_init.core.cli import (
    CONFIGS_DIR,
    UsageError,
    parse_yaml_and_cli,
    read_yaml_config,
    source_fields,
)
from hf_init.lm.data.args import DataArguments

DEFAULT_CONFIG = CONFIGS_DIR / "pretrain_tiny.yaml"


@dataclass
class ModelArguments:
    """The model (a GPT-2 or a Llama, sized by the same flags) and its init scheme (recorded in
    the saved config.json)."""

    model_type: str = field(default="gpt2", metadata={"help": "model family: gpt2 or llama"})
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
    n_kv_head: int | None = field(
        default=None,
        metadata={"help": "llama: key/value heads (grouped-query attention; default n_head)"},
    )
    n_inner: int | None = field(
        default=None,
        metadata={"help": "MLP width (default: gpt2 4 n_embd, llama 8/3 n_embd up to 256s)"},
    )
    dropout: float = field(
        default=0.0, metadata={"help": "gpt2: resid/embd/attn dropout; llama: attention dropout"}
    )

    def __post_init__(self):
        # make_config's checks, on these fields directly (they carry the config's names)
        from hf_init.lm.families import get_family
        from hf_init.lm.modeling import (
            _check_shape,
            check_llama_initializer_range,
            validate_init_config,
        )

        family = get_family(self.model_type)
        if not 0 <= self.dropout < 1:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout}")
        sizes = ("n_layer", "n_embd", "n_head", "n_kv_head", "n_inner")
        _check_shape({name: getattr(self, name) for name in sizes})
        if family.model_type == "gpt2" and self.n_kv_head not in (None, self.n_head):
            raise UsageError(
                f"--n_kv_head {self.n_kv_head}: GPT-2 has no grouped-query attention "
                f"(drop it, or --model_type llama)"
            )
        validate_init_config(self)
        if family.model_type == "llama":
            check_llama_initializer_range(self.initializer_range)
        self._refuse_unused_options()

    def dropouts(self) -> dict:
        """``make_config``'s dropout settings for ``--dropout``: GPT-2's residual, embedding and
        attention dropout, a Llama's attention dropout (the only one it has)."""
        if self.model_type == "llama":
            return {"attn_pdrop": self.dropout}
        return {name: self.dropout for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}

    def _refuse_unused_options(self) -> None:
        """An option the scheme does not read would be recorded (config.json, run_info.json) as if
        it had shaped the weights: refuse it in one line naming what the scheme does read."""
        from hf_init.core.schemes import SCHEME_OPTIONS, unused_options
        from hf_init.lm.modeling import _OPTION_ATTRS, scheme_options

        flag = {opt: "--" + attr for attr, opt in _OPTION_ATTRS.items()}  # SchemeOptions field
        unused = unused_options(self.init_scheme, scheme_options(self))
        if unused:
            used = [flag[o] for o in SCHEME_OPTIONS[self.init_scheme]]
            readers = sorted(n for n, opts in SCHEME_OPTIONS.items() if unused[0] in opts)
            unused_flags = ", ".join(flag[o] for o in unused)
            raise UsageError(
                f"init scheme {self.init_scheme!r} does not use {unused_flags} "
                f"(it reads {', '.join(used) or 'no option'}); drop it, "
                f"or pick a scheme that reads {flag[unused[0]]}: {', '.join(readers)}"
            )


@dataclass
class RunArguments:
    """What this script adds around the Trainer."""

    variance_steps: int | None = field(
        default=None,
        metadata={"help": "record Q/K/V variance every N optimizer steps (default: logging_steps)"},
    )
    attention_probe_blocks: int = field(
        default=1,  # attention_probe.PROBE_BLOCKS (that module imports torch)
        metadata={"help": "held-out blocks in the attention probe batch (0: no attention records)"},
    )
    attention_probe_steps: int = field(
        default=20,  # attention_probe.PROBE_STEPS
        metadata={
            "help": "run the attention probe every N optimizer steps (and at step 0 and the end)"
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace a run already in output_dir (otherwise refuse)"}
    )
    # the spike monitor's defaults: OLMo-core's (hf_init.lm.spikes says why)
    spike_window: int = field(
        default=128,
        metadata={"help": "spike monitor: z-scores over the last N steps' loss and grad norm"},
    )
    spike_threshold: float = field(
        default=6.0,
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
        if self.attention_probe_steps < 1:
            raise UsageError(
                f"attention_probe_steps must be >= 1, got {self.attention_probe_steps}"
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


def check_training_arguments(args) -> None:
    """Refuse optimizer, schedule and batch values that torch or the Trainer would only reject once
    training (or the final evaluation) is under way."""
    for name in (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
    ):
        if getattr(args, name) < 1:
            raise UsageError(f"{name} must be >= 1, got {getattr(args, name)}")
    _check_finite(args, "learning_rate", 0)
    _check_finite(args, "weight_decay", 0)
    _check_finite(args, "adam_beta1", 0, high=1)
    _check_finite(args, "adam_beta2", 0, high=1)
    _check_finite(args, "adam_epsilon", 0)
    _check_finite(args, "max_grad_norm", 0)
    if args.warmup_steps < 0:
        raise UsageError(f"warmup_steps must be >= 0, got {args.warmup_steps}")
    if args.max_steps <= 0:
        if args.max_steps != -1:
            raise UsageError(
                f"max_steps must be >= 1 (or -1: train for num_train_epochs), got {args.max_steps}"
            )
        _check_finite(args, "num_train_epochs", 0, strict=True)
    _check_report_to(args.report_to)
    # --resume_from_checkpoint is checked against the output folder before anything is written:
    # hf_init.lm.run_folder.resolve_resume


def _check_finite(args, name: str, low: float, strict: bool = False, high: float | None = None):
    v = getattr(args, name)
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


def _check_report_to(report_to: list[str] | None) -> None:
    """An integration whose package is missing: one line now, not the Trainer's traceback later."""
    from transformers.integrations import get_available_reporting_integrations

    available = get_available_reporting_integrations()
    missing = [r for r in (report_to or []) if r not in available]
    if missing:
        raise UsageError(
            f"--report_to {missing[0]}: its package is not installed (pip install {missing[0]}); "
            f"installed here: {', '.join(available) or 'none'} (or --report_to none)"
        )


#: What ``--help`` lists: (title, module, dataclass), read from source.
FLAG_SOURCES = (
    ("model", "hf_init.lm.args", "ModelArguments"),
    ("data", "hf_init.lm.data.args", "DataArguments"),
    ("run", "hf_init.lm.args", "RunArguments"),
    ("training (TrainingArguments)", "transformers.training_args", "TrainingArguments"),
)


def help_text() -> str:
    """Every flag with its help and its default (the built-in YAML's value where it sets one)."""
    usage = "%(prog)s [config.yaml] [--flag value ...]"
    parser = argparse.ArgumentParser("scripts/pretrain.py", usage, add_help=False)
    defaults = read_yaml_config(DEFAULT_CONFIG)
    for title, module, name in FLAG_SOURCES:
        group = parser.add_argument_group(title)
        for flag, default, text in source_fields(module, name):
            value = repr(defaults[flag]) if flag in defaults else default
            group.add_argument(f"--{flag}", help=f"{text} (default: {value})".replace("%", "%%"))
    return parser.format_help()


def build_parser():
    """The full parser: the three dataclasses above and transformers' ``TrainingArguments``."""
    from transformers import HfArgumentParser, TrainingArguments

    return HfArgumentParser(
        (ModelArguments, DataArguments, RunArguments, TrainingArguments), allow_abbrev=False
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
    parser = build_parser()
    if not accelerator_available():
        # Without use_cpu, TrainingArguments under `accelerate launch --multi_gpu` on a machine with
        # no GPU inits a process group but trains every rank alone (world size 1, both writing the
        # same files). use_cpu=True makes accelerate pick MULTI_CPU with gloo: real DDP.
        parser.set_defaults(use_cpu=True)
    (model_args, data_args, run_args, training_args), config_path = parse_yaml_and_cli(
        parser, argv, default_config=DEFAULT_CONFIG
    )
    check_training_arguments(training_args)
    if run_args.skip_spike_updates and training_args.fp16:
        raise UsageError(
            "--skip_spike_updates cannot skip an update under --fp16 (its loss scaler steps the "
            "optimizer itself); use --bf16, or drop --skip_spike_updates"
        )
    return model_args, data_args, run_args, training_args, config_path


def model_config(model_args: ModelArguments, vocab_size: int, n_positions: int, tokenizer=None):
    """The GPT2Config or LlamaConfig (init scheme validated by ``make_config``), special token ids
    from the tokenizer."""
    from hf_init.lm.modeling import make_config

    kwargs = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name, None) is not None:
            kwargs[name] = getattr(tokenizer, name)
    return make_config(
        model_type=model_args.model_type,
        init_scheme=model_args.init_scheme,
        init_std=model_args.init_std,
        init_fan_mode=model_args.init_fan_mode,
        init_nonlinearity=model_args.init_nonlinearity,
        init_gain=model_args.init_gain,
        initializer_range=model_args.initializer_range,
        n_layer=model_args.n_layer,
        n_embd=model_args.n_embd,
        n_head=model_args.n_head,
        n_kv_head=model_args.n_kv_head,
        n_inner=model_args.n_inner,
        vocab_size=vocab_size,
        n_positions=n_positions,
        **model_args.dropouts(),
        **kwargs,
    )
