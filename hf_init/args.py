"""The pretraining job's arguments: the dataclasses behind ``scripts/pretrain.py``'s YAML keys and
flags, each with its checks in ``__post_init__`` (bad input is refused while parsing, before
anything is read or written), and :func:`parse_args`.

The built-in default config, ``hf_init/configs/pretrain_tiny.yaml``, ships inside the package
(package data), so it is found from an installed copy too; a user YAML is applied on top of it
(see :func:`hf_init.cli.parse_yaml_and_cli`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments

from .cli import UsageError, parse_yaml_and_cli
from .data.args import DataArguments

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS_DIR / "pretrain_tiny.yaml"


@dataclass
class ModelArguments:
    """The GPT-2 architecture and its init scheme (recorded in the saved config.json)."""

    init_scheme: str = field(default="gpt2", metadata={"help": "init scheme (see hf_init.schemes.SCHEMES)"})
    init_std: float | None = field(default=None, metadata={"help": "std of every weight (scheme `normal`), > 0"})
    init_fan_mode: str = field(default="fan_in", metadata={"help": "kaiming_*: fan_in or fan_out"})
    init_nonlinearity: str = field(default="relu", metadata={"help": "kaiming_*: gain of this nonlinearity"})
    init_gain: float = field(default=1.0, metadata={"help": "xavier_*: gain multiplying the std"})
    initializer_range: float = field(default=0.02, metadata={"help": "GPT-2's r (scheme gpt2, embeddings)"})
    n_layer: int = field(default=12, metadata={"help": "number of transformer blocks"})
    n_embd: int = field(default=128, metadata={"help": "residual width"})
    n_head: int = field(default=4, metadata={"help": "attention heads (must divide n_embd)"})
    dropout: float = field(default=0.0, metadata={"help": "resid/embd/attn dropout"})

    def __post_init__(self):
        # the same checks make_config applies, on these fields directly (they carry the config's names)
        from .modeling import _check_shape, validate_init_config

        if not 0 <= self.dropout < 1:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout}")
        _check_shape({"n_layer": self.n_layer, "n_embd": self.n_embd, "n_head": self.n_head})
        validate_init_config(self)


@dataclass
class RunArguments:
    """What this script adds around the Trainer."""

    variance_steps: int | None = field(
        default=None, metadata={"help": "record Q/K/V variance every N optimizer steps (default: logging_steps)"})
    attention_probe_blocks: int = field(
        default=16, metadata={"help": "held-out blocks in the attention probe batch (0: no attention records)"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace a run already in output_dir (otherwise refuse)"})

    def __post_init__(self):
        if self.variance_steps is not None and self.variance_steps < 1:
            raise UsageError(f"variance_steps must be >= 1, got {self.variance_steps}")
        if self.attention_probe_blocks < 0:
            raise UsageError(f"attention_probe_blocks must be >= 0, got {self.attention_probe_blocks}")


@dataclass
class PretrainTrainingArguments(TrainingArguments):
    """``TrainingArguments`` whose optimizer, schedule and batch values are checked when parsed:
    torch or the Trainer would only reject them once training (or the final evaluation) is under way."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
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
                raise UsageError(f"max_steps must be >= 1 (or -1: train for num_train_epochs), got {self.max_steps}")
            self._finite("num_train_epochs", 0, strict=True)
        if self.resume_from_checkpoint:
            # not wired: trainer.train() would need it, variance.jsonl would have to be appended without the
            # steps after the checkpoint, and the tokenizer would have to come from the checkpoint
            raise UsageError(f"--resume_from_checkpoint is not supported by scripts/pretrain.py (got "
                             f"{self.resume_from_checkpoint!r}); start a new run in another --output_dir")

    def _finite(self, name: str, low: float, strict: bool = False, high: float | None = None) -> None:
        v = getattr(self, name)
        ok = v is not None and math.isfinite(v) and (v > low if strict else v >= low) and (high is None or v < high)
        if not ok:
            allowed = f"{'>' if strict else '>='} {low}" + (f" and < {high}" if high is not None else "")
            raise UsageError(f"{name} must be a finite number {allowed}, got {v}")


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, RunArguments, PretrainTrainingArguments))


def accelerator_available() -> bool:
    """A CUDA, XPU or MPS device is present (otherwise training runs on the CPU)."""
    import torch

    return bool(torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
                or torch.backends.mps.is_available())


def parse_args(argv: list[str]):
    """``[config.yaml] [--flag value ...]`` on top of :data:`DEFAULT_CONFIG`. Returns
    ``(model_args, data_args, run_args, training_args, config_path)``; bad values raise
    :class:`~hf_init.cli.UsageError` (one line)."""
    parser = build_parser()
    if not accelerator_available():
        # Without use_cpu, TrainingArguments under `accelerate launch --multi_gpu` on a machine with
        # no GPU inits a process group but trains every rank alone (world size 1, both writing the
        # same files). use_cpu=True makes accelerate pick MULTI_CPU with gloo: real DDP.
        parser.set_defaults(use_cpu=True)
    (model_args, data_args, run_args, training_args), config_path = parse_yaml_and_cli(
        parser, argv, default_config=DEFAULT_CONFIG)
    return model_args, data_args, run_args, training_args, config_path


def model_config(model_args: ModelArguments, vocab_size: int, n_positions: int, tokenizer=None):
    """The GPT2Config (init scheme validated by ``make_config``), special token ids from the tokenizer."""
    from .modeling import make_config

    kwargs = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name, None) is not None:
            kwargs[name] = getattr(tokenizer, name)
    return make_config(
        init_scheme=model_args.init_scheme, init_std=model_args.init_std, init_fan_mode=model_args.init_fan_mode,
        init_nonlinearity=model_args.init_nonlinearity, init_gain=model_args.init_gain,
        initializer_range=model_args.initializer_range, n_layer=model_args.n_layer, n_embd=model_args.n_embd,
        n_head=model_args.n_head, vocab_size=vocab_size, n_positions=n_positions,
        resid_pdrop=model_args.dropout, embd_pdrop=model_args.dropout, attn_pdrop=model_args.dropout, **kwargs)
