"""GPT-2 pretraining from scratch with per-layer Q/K/V variance tracking: the logic behind
``scripts/pretrain.py`` (arguments, output-folder check, the run, run_info, summary).

Flow: YAML + flags -> (ModelArguments, DataArguments, RunArguments, TrainingArguments) ->
raw text -> tokenizer -> blocks -> GPT-2 with the init scheme -> Trainer with
:class:`~hf_init.callbacks.QKVVarianceCallback` -> eval (loss, perplexity, next-token
accuracy) -> model + tokenizer, figures, ``run_info.json``, printed summary.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cli import UsageError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "pretrain_tiny.yaml"
RUN_INFO = "run_info.json"
# files and folders that mean "this folder already holds a run": everything a run writes
RUN_MARKERS = ("variance.jsonl", RUN_INFO, "config.json", "generation_config.json", "model.safetensors",
               "training_args.bin", "trainer_state.json", "tokenizer.json", "tokenizer_config.json", "runs",
               "figures", "checkpoint-*")


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


@dataclass
class RunArguments:
    """What this script adds around the Trainer."""

    variance_steps: int | None = field(
        default=None, metadata={"help": "record Q/K/V variance every N optimizer steps (default: logging_steps)"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace a run already in output_dir (otherwise refuse)"})


def build_parser():
    from transformers import HfArgumentParser, TrainingArguments

    from .data.text import DataArguments

    return HfArgumentParser((ModelArguments, DataArguments, RunArguments, TrainingArguments))


def accelerator_available() -> bool:
    """A CUDA, XPU or MPS device is present (otherwise training runs on the CPU)."""
    import torch

    return bool(torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
                or torch.backends.mps.is_available())


def parse_args(argv: list[str]):
    """``[config.yaml] [--flag value ...]``; without a YAML file, configs/pretrain_tiny.yaml."""
    from .cli import parse_yaml_and_cli

    parser = build_parser()
    if not accelerator_available():
        # Without use_cpu, TrainingArguments under `accelerate launch --multi_gpu` on a machine with
        # no GPU inits a process group but trains every rank alone (world size 1, both writing the
        # same files). use_cpu=True makes accelerate pick MULTI_CPU with gloo: real DDP.
        parser.set_defaults(use_cpu=True)
    (model_args, data_args, run_args, training_args), config_path = parse_yaml_and_cli(
        parser, argv, default_config=DEFAULT_CONFIG)
    return model_args, data_args, run_args, training_args, config_path


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> list[str]:
    """Refuse an output folder that already holds a run (any of RUN_MARKERS), unless
    ``overwrite``; returns what it holds. Writes nothing (see :mod:`hf_init.outputs`)."""
    from .outputs import check_output_dir as check

    return check(output_dir, overwrite, RUN_MARKERS, flag="--overwrite_output_dir")


def _check_training_args(args) -> None:
    """Optimizer, schedule and batch arguments that torch or the Trainer would only reject once
    training (or the final evaluation) is under way: refuse them before anything is read or written."""
    def finite(name, low, strict=False, high=None):
        v = getattr(args, name)
        ok = v is not None and math.isfinite(v) and (v > low if strict else v >= low) and (high is None or v < high)
        if not ok:
            allowed = f"{'>' if strict else '>='} {low}" + (f" and < {high}" if high is not None else "")
            raise UsageError(f"{name} must be a finite number {allowed}, got {v}")

    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"{name} must be >= 1, got {getattr(args, name)}")
    finite("learning_rate", 0)
    finite("weight_decay", 0)
    finite("adam_beta1", 0, high=1)
    finite("adam_beta2", 0, high=1)
    finite("adam_epsilon", 0)
    finite("max_grad_norm", 0)
    if args.warmup_steps < 0:
        raise UsageError(f"warmup_steps must be >= 0, got {args.warmup_steps}")
    if args.max_steps <= 0:
        if args.max_steps != -1:
            raise UsageError(f"max_steps must be >= 1 (or -1: train for num_train_epochs), got {args.max_steps}")
        finite("num_train_epochs", 0, strict=True)
    if args.resume_from_checkpoint:
        # not wired: trainer.train() would need it, variance.jsonl would have to be appended without the
        # steps after the checkpoint, and the tokenizer would have to come from the checkpoint
        raise UsageError(f"--resume_from_checkpoint is not supported by scripts/pretrain.py (got "
                         f"{args.resume_from_checkpoint!r}); start a new run in another --output_dir")


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


def versions() -> dict:
    import accelerate
    import datasets
    import evaluate
    import tokenizers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "datasets": datasets.__version__, "evaluate": evaluate.__version__,
            "tokenizers": tokenizers.__version__, "platform": platform.platform()}


def next_token_metric():
    """compute_metrics / preprocess_logits_for_metrics for the local next-token accuracy."""
    import evaluate

    from .metrics import metric_path

    metric = evaluate.load(metric_path("next_token_accuracy"), keep_in_memory=True)

    def preprocess_logits_for_metrics(logits, labels):
        return (logits[0] if isinstance(logits, tuple) else logits).argmax(dim=-1)

    def compute_metrics(eval_pred):
        out = metric.compute(predictions=eval_pred.predictions, references=eval_pred.label_ids)
        return {"accuracy": out["accuracy"], "accuracy_tokens": out["n_tokens"]}

    return compute_metrics, preprocess_logits_for_metrics


def _check_model_args(model_args: ModelArguments, data_args) -> None:
    """Dropout here; the shape (n_layer, n_embd, n_head >= 1, n_head divides n_embd) and the init
    scheme are checked by ``make_config`` (one ValueError naming the value)."""
    if not 0 <= model_args.dropout < 1:
        raise UsageError(f"dropout must be in [0, 1), got {model_args.dropout}")
    model_config(model_args, vocab_size=max(2, getattr(data_args, "vocab_size", 2) or 2), n_positions=8)


def run(argv: list[str], started: float | None = None) -> dict:
    """The whole pretraining job. Returns the run_info dict (also written to the run folder)."""
    started = time.time() if started is None else started
    model_args, data_args, run_args, training_args, config_path = parse_args(argv)
    # every check that needs no data, before anything is written
    _check_model_args(model_args, data_args)
    if run_args.variance_steps is not None and run_args.variance_steps < 1:
        raise UsageError(f"variance_steps must be >= 1, got {run_args.variance_steps}")
    _check_training_args(training_args)
    found = check_output_dir(training_args.output_dir, run_args.overwrite_output_dir)
    if training_args.push_to_hub:
        check_hub_access(training_args.hub_token)

    import torch
    from transformers import Trainer, default_data_collator, set_seed

    from .analysis.variance import format_summary, variance_table
    from .callbacks import VARIANCE_FILE
    from .data.text import load_raw_text, tokenize_and_group
    from .data.tokenizer import load_or_train_tokenizer
    from .modeling import build_model
    from .outputs import kept_until_success, write_json
    from .records import read_records
    from .plots.pretrain import plot_run

    set_seed(training_args.seed)
    raw, corpus_info = load_raw_text(data_args)
    tokenizer = load_or_train_tokenizer(data_args, raw["train"])
    check_same_tokenizer(tokenizer, training_args.world_size)
    with training_args.main_process_first(desc="tokenize and group"):
        lm_data = tokenize_and_group(raw, tokenizer, data_args)
    train_data, eval_data = lm_data["train"], lm_data["validation"]
    block_size = data_args.block_size  # tokenize_and_group makes blocks of exactly this length

    config = model_config(model_args, vocab_size=len(tokenizer), n_positions=block_size, tokenizer=tokenizer)
    set_seed(training_args.seed)
    model = build_model(config)
    n_params = sum(p.numel() for p in model.parameters())

    out = Path(training_args.output_dir)
    with kept_until_success(out, found, active=training_args.process_index == 0):
        compute_metrics, preprocess_logits = next_token_metric()
        variance_cb = make_variance_callback(out, run_args.variance_steps, training_args)
        trainer = Trainer(model=model, args=training_args, train_dataset=train_data, eval_dataset=eval_data,
                          processing_class=tokenizer, data_collator=default_data_collator,
                          compute_metrics=compute_metrics, preprocess_logits_for_metrics=preprocess_logits,
                          callbacks=[variance_cb])

        train_result = trainer.train()
        eval_metrics = trainer.evaluate()
        world_size = training_args.world_size
        steps = trainer.state.global_step
        tokens_seen = (steps * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                       * world_size * block_size)
        runtime = train_result.metrics.get("train_runtime", float("nan"))
        eval_loss = eval_metrics.get("eval_loss", float("nan"))

        trainer.save_model(str(out))  # main process only; plain GPT-2 config
        # The Trainer's model card calls a model "fine-tuned from config._name_or_path" unless
        # that is a local folder; ours was built from scratch, so point it at the run folder.
        model.config._name_or_path = str(out)
        info: dict = {}
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(out))
            figures = plot_run(out / VARIANCE_FILE, out / "figures")
            table = variance_table(read_records(out / VARIANCE_FILE))
            info = {
                "versions": versions(),
                "command": [sys.argv[0], *argv],
                "config_file": str(config_path) if config_path else None,
                "config": {"model": asdict(model_args), "data": asdict(data_args), "run": asdict(run_args),
                           "training": training_args.to_dict()},
                "init": {"scheme": config.init_scheme, "std": config.init_std, "fan_mode": config.init_fan_mode,
                         "nonlinearity": config.init_nonlinearity, "gain": config.init_gain,
                         "initializer_range": config.initializer_range},
                "seed": training_args.seed,
                "corpus": corpus_info,
                "blocks": {"train": _len(train_data), "validation": _len(eval_data), "block_size": block_size},
                "vocab_size": len(tokenizer),
                "world_size": world_size,
                "device": str(training_args.device),
                "n_parameters": n_params,
                "optimizer_steps": steps,
                "tokens_seen": tokens_seen,
                "train_runtime_s": runtime,
                "tokens_per_second": tokens_seen / runtime if runtime else None,
                "train_loss": train_result.training_loss,
                "eval_loss": eval_loss,
                "perplexity": math.exp(eval_loss) if eval_loss < 700 else float("inf"),
                "next_token_accuracy": eval_metrics.get("eval_accuracy"),
                "eval_tokens": eval_metrics.get("eval_accuracy_tokens"),
                "variance_records": {"file": VARIANCE_FILE, "steps": [int(s) for s in table.steps],
                                     "layers": len(table.layers)},
                "figures": [str(p.relative_to(out)) for p in figures],
                "wall_time_s": time.time() - started,
            }
            write_json(out / RUN_INFO, info)
            trainer.create_model_card(**model_card_fields(info))  # README.md in the run folder
            print_summary(info, format_summary(table), out)
        if training_args.push_to_hub:  # every rank calls it; only the main process uploads
            trainer.push_to_hub(commit_message=f"hf-init pretraining run, init scheme {config.init_scheme}",
                                **model_card_fields({"init": {"scheme": config.init_scheme},
                                                     "corpus": corpus_info}))
    torch_dist_barrier(torch)
    return info


def make_variance_callback(out: Path, every: int | None, training_args):
    """The variance callback of a run and its sinks: ``variance.jsonl`` in the run folder and,
    when the run reports to TensorBoard, the q/k/v variances in ``runs/variance`` (a run of its
    own next to the Trainer's). Sinks are only made on the main process (the one that writes)."""
    from .callbacks import VARIANCE_FILE, QKVVarianceCallback
    from .sinks import JsonlSink, TensorBoardSink

    sinks = []
    if training_args.process_index == 0:
        sinks.append(JsonlSink(out / VARIANCE_FILE))
        if "tensorboard" in (training_args.report_to or []):
            from torch.utils.tensorboard import SummaryWriter

            sinks.append(TensorBoardSink(SummaryWriter(log_dir=str(out / "runs" / "variance"))))
    return QKVVarianceCallback(sinks, every=every)


def model_card_fields(info: dict) -> dict:
    """Keyword arguments for ``Trainer.create_model_card`` / ``push_to_hub``: tags that say
    which init scheme the run started from and which corpus it saw."""
    corpus = info.get("corpus") or {}
    return {"tags": ["hf-init", "gpt2", f"init-{info['init']['scheme']}"], "tasks": "text-generation",
            "dataset": corpus.get("name")}


def check_hub_access(token: str | None = None) -> None:
    """Before anything is written: --push_to_hub needs the Hub and a login. One clear line if not."""
    try:
        from huggingface_hub import whoami

        whoami(token=token)
    except Exception as err:  # offline mode, no token, no network: all end the same way
        reason = " ".join(str(err).split())[:200]
        raise UsageError(f"--push_to_hub needs the Hugging Face Hub and a login (`hf auth login`), "
                         f"which failed: {reason}; train without --push_to_hub and upload the run folder "
                         f"later with `hf upload`") from None


def _len(dataset) -> int | None:
    """Number of rows, or None for a streamed (iterable) dataset."""
    try:
        return len(dataset)
    except TypeError:
        return None


def check_same_tokenizer(tokenizer, world_size: int) -> None:
    """Every rank trains (or loads) its tokenizer itself: make sure they all got the same one."""
    if world_size <= 1:
        return
    import hashlib

    import torch

    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    digests = [None] * world_size
    torch.distributed.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks built different tokenizers ({digests}); pass --tokenizer_name with a saved one")


def torch_dist_barrier(torch) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def print_summary(info: dict, table_text: str, out: Path) -> None:
    print()
    print(table_text)
    print(f"init {info['init']['scheme']} (std {info['init']['std']}), {info['n_parameters']:,} parameters, "
          f"world size {info['world_size']}, {info['optimizer_steps']} steps, {info['tokens_seen']:,} tokens "
          f"in {info['train_runtime_s']:.1f} s ({info['tokens_per_second']:,.0f} tokens/s)")
    print(f"eval loss {info['eval_loss']:.4f}, perplexity {info['perplexity']:.2f}, "
          f"next-token accuracy {info['next_token_accuracy']:.4f} ({info['eval_tokens']} tokens)")
    print(f"run folder {out}: model + tokenizer, variance.jsonl, figures/, runs/ (TensorBoard), {RUN_INFO}")
