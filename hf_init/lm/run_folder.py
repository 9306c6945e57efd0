"""Where a pretraining run stands on disk: its checkpoints, resuming from one, and what an
unfinished or interrupted run tells the user (the exact command that continues or restarts it)."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from hf_init.core.cli import RunStopped, UsageError


def last_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step that has a ``trainer_state.json``."""
    folder = Path(folder)
    best = None
    for p in folder.glob("checkpoint-*") if folder.is_dir() else []:
        tail = p.name.rsplit("-", 1)[-1]
        if (
            tail.isdigit()
            and (p / "trainer_state.json").is_file()
            and (best is None or int(tail) > best[0])
        ):
            best = (int(tail), p)
    return best[1] if best else None


def checkpoint_step(checkpoint: Path) -> int:
    import json

    return int(
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
    )


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
        return (
            f"output folder {str(out)!r} holds a run that did not finish ({held}; no {RUN_INFO}), last "
            f"checkpoint {ckpt.name}; continue it with: {rerun_command(argv, ['--resume_from_checkpoint', 'true'])}"
            f"  (or replace it: add --overwrite_output_dir true)"
        )
    return (
        f"output folder {str(out)!r} holds a run that did not finish and has no checkpoint ({held}; no "
        f"{RUN_INFO}); restart it with: {rerun_command(argv, ['--overwrite_output_dir', 'true'])}"
    )


def resolve_resume(training_args, overwrite: bool) -> Path | None:
    """``--resume_from_checkpoint``: ``true`` = the last checkpoint in --output_dir, else a checkpoint
    folder. One line if there is none or it is not a Trainer checkpoint."""
    value = training_args.resume_from_checkpoint
    if not value or str(value).lower() == "false":
        return None
    if overwrite:
        raise UsageError(
            "--resume_from_checkpoint continues the run in --output_dir; it cannot be combined "
            "with --overwrite_output_dir"
        )
    out = Path(training_args.output_dir)
    if str(value).lower() == "true":
        ckpt = last_checkpoint(out)
        if ckpt is None:
            raise UsageError(
                f"--resume_from_checkpoint true: no checkpoint-<step> folder with a trainer_state.json "
                f"in {str(out)!r}; save checkpoints with --save_strategy steps --save_steps N"
            )
        return ckpt
    ckpt = Path(value)
    if not (ckpt / "trainer_state.json").is_file():
        raise UsageError(
            f"--resume_from_checkpoint {str(value)!r} is not a Trainer checkpoint folder (no "
            f"trainer_state.json); pass a checkpoint-<step> folder or true (the last one in --output_dir)"
        )
    return ckpt


def interrupted(out: Path, step: int, argv: list[str]) -> RunStopped:
    """SIGINT or SIGTERM (see scripts/pretrain.py) during training: one line saying what is kept
    and how to continue; exit status 128 + the signal number."""
    import signal

    signum = int(os.environ.get("HF_INIT_SIGNAL", signal.SIGINT))
    ckpt = last_checkpoint(out)
    how = (
        f"continue from {ckpt.name} with: {rerun_command(argv, ['--resume_from_checkpoint', 'true'])}"
        if ckpt is not None
        else f"no checkpoint to resume from; restart with: "
        f"{rerun_command(argv, ['--overwrite_output_dir', 'true'])}"
    )
    return RunStopped(
        f"interrupted ({signal.Signals(signum).name}) at step {step}: records up to step {step} are "
        f"in {str(out / 'variance.jsonl')!r}; {how}",
        code=128 + signum,
    )


def latest_events_dir(out: Path) -> Path | None:
    """The folder of the most recently written TensorBoard events file under ``out/runs``."""
    events = sorted((out / "runs").rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    return events[-1].parent if events else None


RUN_INFO = "run_info.json"


def versions() -> dict:
    import accelerate
    import datasets
    import evaluate
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "evaluate": evaluate.__version__,
        "tokenizers": tokenizers.__version__,
        "platform": platform.platform(),
    }


def init_info(config, init_rows: list[dict] | None = None) -> dict:
    """The init scheme and its options, as recorded on the GPT2Config, and (``init_rows``, the rows of
    :func:`hf_init.lm.modeling.init_report` taken at initialization) the std each weight kind got: the
    scheme's value and the one measured on the freshly initialized weights."""
    info = {
        "scheme": config.init_scheme,
        "std": config.init_std,
        "fan_mode": config.init_fan_mode,
        "nonlinearity": config.init_nonlinearity,
        "gain": config.init_gain,
        "initializer_range": config.initializer_range,
    }
    if init_rows is not None:
        info["std_by_weight"] = {
            r["weight"]: {"scheme": r["scheme_std"], "measured": r["measured_std"]}
            for r in init_rows
        }
    return info


def format_init_stds(init: dict) -> str:
    """``init kaiming_normal: std 0.25 (query, key, ...), 0.02 (wte, wpe)``: the std each weight kind
    got from the scheme, weight kinds with the same std together (not the --init_std flag, which
    only the `normal` scheme reads)."""
    groups: dict[float, list[str]] = {}
    for role, stds in (init.get("std_by_weight") or {}).items():
        groups.setdefault(round(stds["scheme"], 12), []).append(role)
    parts = [
        f"{std:.4g} ({', '.join(roles)})" for std, roles in sorted(groups.items(), reverse=True)
    ]
    return f"init {init['scheme']}: std " + ", ".join(parts) if parts else f"init {init['scheme']}"


#: What a run folder can hold, each with the entries that show it is there, in the printed order.
_OUTPUTS = (
    ("model", ("model.safetensors", "config.json")),
    ("tokenizer", ("tokenizer.json",)),
    ("variance.jsonl", ("variance.jsonl",)),
    ("figures/", ("figures",)),
    ("runs/ (TensorBoard)", ("runs",)),
    ("checkpoint-*/", ("checkpoint-*",)),
    (RUN_INFO, (RUN_INFO,)),
    ("README.md (model card)", ("README.md",)),
)


def outputs_present(out: Path) -> list[str]:
    """The names of :data:`_OUTPUTS` that ``out`` holds (only those: a run reporting to no TensorBoard
    has no ``runs/``, one that saved no checkpoint has no ``checkpoint-*/``)."""
    out = Path(out)
    return [
        label
        for label, names in _OUTPUTS
        if any((list(out.glob(n)) if "*" in n else (out / n).exists()) for n in names)
    ]


def n_rows(dataset) -> int | None:
    """Number of rows, or None for a streamed (iterable) dataset."""
    try:
        return len(dataset)
    except TypeError:
        return None


def run_info(
    *,
    argv,
    config_path,
    args,
    config,
    corpus,
    train_data,
    eval_data,
    block_size: int,
    vocab_size: int,
    training_args,
    n_parameters: int,
    steps: int,
    train_result,
    eval_metrics: dict,
    variance_file: str,
    table,
    figures,
    out: Path,
    started: float,
    init_rows: list[dict] | None = None,
    resumed: dict | None = None,
    first_step: int = 0,
) -> dict:
    """The ``run_info.json`` dict. ``args`` = (model, data, run) argument dataclasses; ``table`` the
    variance table of the run's records; ``figures`` the paths written under ``out``."""
    model_args, data_args, run_args = args
    world_size = training_args.world_size
    tokens_seen = (
        steps
        * training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * world_size
        * block_size
    )
    runtime = train_result.metrics.get("train_runtime", float("nan"))
    # this process trained steps first_step+1 .. steps in `runtime` seconds (a resumed run: only those)
    tokens_this_run = tokens_seen * (steps - first_step) // steps if steps else 0
    tokens_per_second = tokens_this_run / runtime if runtime and math.isfinite(runtime) else None
    cfg = config
    flops_per_token = model_flops_per_token(
        n_parameters, cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, block_size
    )
    eval_loss = eval_metrics.get("eval_loss", float("nan"))
    return {
        "versions": versions(),
        "command": [sys.argv[0], *argv],
        "config_file": str(config_path) if config_path else None,
        "config": {
            "model": asdict(model_args),
            "data": asdict(data_args),
            "run": asdict(run_args),
            "training": training_args.to_dict(),
        },
        "init": init_info(config, init_rows),
        "seed": training_args.seed,
        "corpus": corpus,
        "blocks": {
            "train": n_rows(train_data),
            "validation": n_rows(eval_data),
            "block_size": block_size,
        },
        "vocab_size": vocab_size,
        "world_size": world_size,
        "device": str(training_args.device),
        "n_parameters": n_parameters,
        "optimizer_steps": steps,
        "tokens_seen": tokens_seen,
        "train_runtime_s": runtime,
        "tokens_per_second": tokens_per_second,
        "model_flops_per_token": flops_per_token,
        "mfu": mfu(
            tokens_per_second,
            flops_per_token,
            str(training_args.device),
            world_size,
            bf16=bool(training_args.bf16 or training_args.fp16),
        ),
        "resumed_from": resumed,
        "train_loss": train_result.training_loss,
        "eval_loss": eval_loss,
        "perplexity": math.exp(eval_loss) if eval_loss < 700 else float("inf"),
        "next_token_accuracy": eval_metrics.get("eval_accuracy"),
        "eval_tokens": eval_metrics.get("eval_accuracy_tokens"),
        "variance_records": {
            "file": variance_file,
            "steps": [int(s) for s in table.steps],
            "layers": len(table.layers),
        },
        "figures": [str(p.relative_to(out)) for p in figures],
        "wall_time_s": time.time() - started,
    }


def model_flops_per_token(
    n_parameters: int, n_layer: int, n_head: int, head_dim: int, seq_len: int
) -> int:
    """Training FLOPs per token (forward + backward) as in the PaLM paper's MFU: 6 N for the
    weight matmuls plus 12 L H Q T for attention (L layers, H heads, Q head size, T context).
    N counts every parameter (embeddings included), as ``run_info.json``'s ``n_parameters``."""
    return 6 * n_parameters + 12 * n_layer * n_head * head_dim * seq_len


# dense peak FLOP/s per device (bf16/fp16 tensor cores, no sparsity), from the vendors' data sheets
PEAK_FLOPS_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "V100": 125e12,
}


def peak_flops(device_name: str | None) -> float | None:
    """Peak bf16 FLOP/s of a known accelerator, matched by name (the longest table key contained in
    ``device_name``, e.g. torch.cuda.get_device_name()); None when unknown (a CPU, say)."""
    if not device_name:
        return None
    hits = [k for k in PEAK_FLOPS_BF16 if k.lower() in device_name.lower()]
    return PEAK_FLOPS_BF16[max(hits, key=len)] if hits else None


def device_name(device: str) -> str | None:
    """The accelerator's name (CUDA only), None on a CPU."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def mfu(
    tokens_per_second: float | None,
    flops_per_token: int,
    device: str,
    world_size: int,
    bf16: bool = True,
) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all ``world_size`` devices;
    None when the device's peak is unknown (CPU) or the run was not in half precision."""
    peak = peak_flops(device_name(device))
    if peak is None or not bf16 or not tokens_per_second:
        return None
    return tokens_per_second * flops_per_token / (peak * world_size)


def model_card_fields(info: dict) -> dict:
    """Keyword arguments for ``Trainer.create_model_card`` / ``push_to_hub``: tags that say
    which init scheme the run started from and which corpus it saw."""
    corpus = info.get("corpus") or {}
    return {
        "tags": ["hf-init", "gpt2", f"init-{info['init']['scheme']}"],
        "tasks": "text-generation",
        "dataset": corpus.get("name"),
    }


def print_summary(info: dict, table_text: str, out: Path) -> None:
    mfu_text = "" if info.get("mfu") is None else f", MFU {info['mfu']:.1%}"
    print()
    print(table_text)
    print(format_init_stds(info["init"]))
    print(
        f"{info['n_parameters']:,} parameters, "
        f"world size {info['world_size']}, {info['optimizer_steps']} steps, {info['tokens_seen']:,} tokens "
        f"in {info['train_runtime_s']:.1f} s ({info['tokens_per_second'] or 0:,.0f} tokens/s{mfu_text})"
    )
    if info.get("resumed_from"):
        r = info["resumed_from"]
        print(
            f"resumed from {r['checkpoint']} (step {r['step']})"
            + (
                f"; {r['set_aside_records']} records the interrupted run wrote after it are in {r['set_aside_file']}"
                if r.get("set_aside_file")
                else ""
            )
        )
    print(
        f"eval loss {info['eval_loss']:.4f}, perplexity {info['perplexity']:.2f}, "
        f"next-token accuracy {info['next_token_accuracy']:.4f} ({info['eval_tokens']} tokens)"
    )
    print(f"run folder {out}: {', '.join(outputs_present(out))}")


def model_card_section(info: dict) -> str:
    """The model card's hf-init section: init scheme, size, data, steps, final perplexity and the
    Q/K/V variance figure embedded (a path inside the run folder, uploaded with it)."""
    corpus = info.get("corpus") or {}
    fig = next((f for f in info.get("figures", []) if f.endswith("qkv_variance_vs_step.png")), None)
    lines = [
        "",
        "## hf-init run",
        "",
        f"- init scheme: `{info['init']['scheme']}`",
        f"- model size: {info['n_parameters']:,} parameters",
        f"- data: {corpus.get('name')}",
        f"- optimizer steps: {info['optimizer_steps']}",
        f"- final perplexity: {info['perplexity']:.2f}",
        "",
    ]
    if fig:
        lines += [f"![Q/K/V weight variance per layer vs step]({fig})", ""]
    return "\n".join(lines)
