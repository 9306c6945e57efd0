"""What a pretraining run reports about itself: ``run_info.json`` (versions, configuration, corpus,
sizes, losses, throughput), the model card's fields and the summary printed at the end."""

from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

RUN_INFO = "run_info.json"


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


def init_info(config) -> dict:
    """The init scheme and its options, as recorded on the GPT2Config."""
    return {"scheme": config.init_scheme, "std": config.init_std, "fan_mode": config.init_fan_mode,
            "nonlinearity": config.init_nonlinearity, "gain": config.init_gain,
            "initializer_range": config.initializer_range}


def n_rows(dataset) -> int | None:
    """Number of rows, or None for a streamed (iterable) dataset."""
    try:
        return len(dataset)
    except TypeError:
        return None


def run_info(*, argv, config_path, args, config, corpus, train_data, eval_data, block_size: int, vocab_size: int,
             training_args, n_parameters: int, steps: int, train_result, eval_metrics: dict, variance_file: str,
             table, figures, out: Path, started: float) -> dict:
    """The ``run_info.json`` dict. ``args`` = (model, data, run) argument dataclasses; ``table`` the
    variance table of the run's records; ``figures`` the paths written under ``out``."""
    model_args, data_args, run_args = args
    world_size = training_args.world_size
    tokens_seen = (steps * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                   * world_size * block_size)
    runtime = train_result.metrics.get("train_runtime", float("nan"))
    eval_loss = eval_metrics.get("eval_loss", float("nan"))
    return {
        "versions": versions(),
        "command": [sys.argv[0], *argv],
        "config_file": str(config_path) if config_path else None,
        "config": {"model": asdict(model_args), "data": asdict(data_args), "run": asdict(run_args),
                   "training": training_args.to_dict()},
        "init": init_info(config),
        "seed": training_args.seed,
        "corpus": corpus,
        "blocks": {"train": n_rows(train_data), "validation": n_rows(eval_data), "block_size": block_size},
        "vocab_size": vocab_size,
        "world_size": world_size,
        "device": str(training_args.device),
        "n_parameters": n_parameters,
        "optimizer_steps": steps,
        "tokens_seen": tokens_seen,
        "train_runtime_s": runtime,
        "tokens_per_second": tokens_seen / runtime if runtime else None,
        "train_loss": train_result.training_loss,
        "eval_loss": eval_loss,
        "perplexity": math.exp(eval_loss) if eval_loss < 700 else float("inf"),
        "next_token_accuracy": eval_metrics.get("eval_accuracy"),
        "eval_tokens": eval_metrics.get("eval_accuracy_tokens"),
        "variance_records": {"file": variance_file, "steps": [int(s) for s in table.steps],
                             "layers": len(table.layers)},
        "figures": [str(p.relative_to(out)) for p in figures],
        "wall_time_s": time.time() - started,
    }


def model_card_fields(info: dict) -> dict:
    """Keyword arguments for ``Trainer.create_model_card`` / ``push_to_hub``: tags that say
    which init scheme the run started from and which corpus it saw."""
    corpus = info.get("corpus") or {}
    return {"tags": ["hf-init", "gpt2", f"init-{info['init']['scheme']}"], "tasks": "text-generation",
            "dataset": corpus.get("name")}


def print_summary(info: dict, table_text: str, out: Path) -> None:
    print()
    print(table_text)
    print(f"init {info['init']['scheme']} (std {info['init']['std']}), {info['n_parameters']:,} parameters, "
          f"world size {info['world_size']}, {info['optimizer_steps']} steps, {info['tokens_seen']:,} tokens "
          f"in {info['train_runtime_s']:.1f} s ({info['tokens_per_second']:,.0f} tokens/s)")
    print(f"eval loss {info['eval_loss']:.4f}, perplexity {info['perplexity']:.2f}, "
          f"next-token accuracy {info['next_token_accuracy']:.4f} ({info['eval_tokens']} tokens)")
    print(f"run folder {out}: model + tokenizer, variance.jsonl, figures/, runs/ (TensorBoard), {RUN_INFO}")
