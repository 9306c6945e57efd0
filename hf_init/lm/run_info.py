"""What a finished pretraining run says about itself: ``run_info.json`` (how it was started, what
it trained on, how fast, how well, where its records and figures are), the summary it prints
and the hf-init section and tags of its model card."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hf_init.core.outputs import package_versions
from hf_init.lm.families import family_of
from hf_init.lm.run_folder import VARIANCE_FILE, RunFolder
from hf_init.lm.spikes import spike_summary
from hf_init.lm.throughput import mfu, model_flops_per_token

if TYPE_CHECKING:
    from transformers import TrainingArguments

    from hf_init.lm.args import ModelArguments, RunArguments
    from hf_init.lm.data.args import DataArguments
    from hf_init.lm.variance import VarianceTable


@dataclass
class RunSetup:
    """A run as started: the command (hub token redacted) and its YAML config, the parsed
    arguments (:func:`hf_init.lm.args.parse_args`), the start time, the checkpoint it continues
    and ``run_info.json``'s ``resumed_from`` (None for a new run), what its folder held before (to
    replace, with --overwrite_output_dir); then, once loaded, the corpus and the std each weight
    kind got at initialization (rows of :func:`hf_init.lm.modeling.init_report`)."""

    argv: list[str]
    config_path: str | Path | None
    model_args: ModelArguments
    data_args: DataArguments
    run_args: RunArguments
    training_args: TrainingArguments
    started: float
    checkpoint: Path | None = None
    resumed: dict | None = None
    found: list[str] = field(default_factory=list)
    corpus: dict | None = None
    init_rows: list[dict] | None = None

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.training_args.output_dir)

    @property
    def is_main(self) -> bool:
        """The main process: the one that writes the run folder."""
        return self.training_args.process_index == 0


def run_info(
    setup: RunSetup, model, trainer, train_result, eval_metrics: dict, table: VarianceTable, figures
) -> dict:
    """The ``run_info.json`` dict of a finished run: ``setup``, the ``model`` as built (before any
    wrapper), the ``trainer`` (its data, steps and tokenizer), the results of ``train`` and
    ``evaluate``, the variance ``table`` of the run's records and the ``figures`` drawn."""
    args = setup.training_args
    eval_loss = eval_metrics.get("eval_loss", float("nan"))
    return {
        **run_description(setup, model, trainer),
        "world_size": args.world_size,
        "device": str(args.device),
        **size_and_speed(setup, model, trainer.state.global_step, train_result),
        "resumed_from": setup.resumed,
        "spikes": spike_summary(trainer.callback_handler.callbacks),
        "train_loss": train_result.training_loss,
        "eval_loss": eval_loss,
        "perplexity": math.exp(eval_loss) if eval_loss < 700 else float("inf"),
        "next_token_accuracy": eval_metrics.get("eval_accuracy"),
        "eval_tokens": eval_metrics.get("eval_accuracy_tokens"),
        "variance_records": {
            "file": VARIANCE_FILE,
            "steps": [int(s) for s in table.steps],
            "layers": len(table.layers),
        },
        "figures": [str(Path(p).relative_to(setup.folder.path)) for p in figures],
        "wall_time_s": time.time() - setup.started,
    }


def run_description(setup: RunSetup, model, trainer) -> dict:
    """What a run was (command, config, init, seed, data), the part of ``run_info.json`` that a
    run that diverged writes too (``diverged.json``)."""
    data_args = setup.data_args
    return {
        "versions": package_versions(),
        "command": [sys.argv[0], *setup.argv],
        "config_file": str(setup.config_path) if setup.config_path else None,
        "config": {
            "model": asdict(setup.model_args),
            "data": asdict(data_args),
            "run": asdict(setup.run_args),
            "training": setup.training_args.to_dict(),
        },
        "model_type": family_of(model.config).model_type,
        "init": init_info(model.config, setup.init_rows),
        "seed": setup.training_args.seed,
        "corpus": setup.corpus,
        "blocks": {
            "train": n_rows(trainer.train_dataset),
            "validation": n_rows(trainer.eval_dataset),
            "block_size": data_args.block_size,
        },
        "vocab_size": len(trainer.processing_class),
    }


def diverged_info(setup: RunSetup, model, trainer, step: int, message: str) -> dict:
    """The ``diverged.json`` dict of a run stopped at ``step`` because training diverged."""
    return {
        **run_description(setup, model, trainer),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "optimizer_steps": step - 1,  # the updates applied: the one of ``step`` was not
        "diverged_at_step": step,
        "message": message,
        "wall_time_s": time.time() - setup.started,
    }


def size_and_speed(setup: RunSetup, model, steps: int, train_result) -> dict:
    """``run_info.json``'s size and speed entries: parameters, steps, tokens seen, runtime, tokens
    per second of the steps this process trained (a resumed run: only those) and MFU."""
    args = setup.training_args
    block_size = setup.data_args.block_size
    n_parameters = sum(p.numel() for p in model.parameters())
    tokens_seen = (
        steps
        * args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * args.world_size
        * block_size
    )
    runtime = train_result.metrics.get("train_runtime", float("nan"))
    first_step = setup.resumed["step"] if setup.resumed else 0
    tokens_this_run = tokens_seen * (steps - first_step) // steps if steps else 0
    tokens_per_second = tokens_this_run / runtime if runtime and math.isfinite(runtime) else None
    dims = family_of(model.config).dims(model.config)  # GPT-2's or Llama's sizes
    flops_per_token = model_flops_per_token(
        n_parameters, dims.n_layer, dims.n_head, dims.head_dim, block_size
    )
    half = bool(args.bf16 or args.fp16)
    return {
        "n_parameters": n_parameters,
        "optimizer_steps": steps,
        "tokens_seen": tokens_seen,
        "train_runtime_s": runtime,
        "tokens_per_second": tokens_per_second,
        "model_flops_per_token": flops_per_token,
        "mfu": mfu(tokens_per_second, flops_per_token, str(args.device), args.world_size, half),
    }


def init_info(config, init_rows: list[dict] | None = None) -> dict:
    """The init scheme and its options, as recorded on the model's config (GPT2Config or
    LlamaConfig), and (``init_rows``, the rows of :func:`hf_init.lm.modeling.init_report` taken at
    initialization) the std each weight kind got: the scheme's value and the one measured on the
    freshly initialized weights."""
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
    """``init kaiming_normal: std 0.25 (query, key, ...), 0.02 (wte, wpe)``: the std each weight
    kind got from the scheme, weight kinds with the same std together (not the --init_std flag,
    which only the `normal` scheme reads)."""
    groups: dict[float, list[str]] = {}
    for role, stds in (init.get("std_by_weight") or {}).items():
        groups.setdefault(round(stds["scheme"], 12), []).append(role)
    parts = [
        f"{std:.4g} ({', '.join(roles)})" for std, roles in sorted(groups.items(), reverse=True)
    ]
    return f"init {init['scheme']}: std " + ", ".join(parts) if parts else f"init {init['scheme']}"


def n_rows(dataset) -> int | None:
    """Number of rows, or None for a streamed (iterable) dataset."""
    try:
        return len(dataset)
    except TypeError:
        return None


def print_summary(info: dict, table_text: str, folder: RunFolder) -> None:
    """The end of a run on stdout: the variance summary, the init stds, size and speed, where a
    resume started, the evaluation, and what the run folder holds."""
    mfu_text = "" if info.get("mfu") is None else f", MFU {info['mfu']:.1%}"
    print()
    print(table_text)
    print(format_init_stds(info["init"]))
    print(
        f"{info['n_parameters']:,} parameters, world size {info['world_size']}, "
        f"{info['optimizer_steps']} steps, {info['tokens_seen']:,} tokens in "
        f"{info['train_runtime_s']:.1f} s ({info['tokens_per_second'] or 0:,.0f} tokens/s"
        f"{mfu_text})"
    )
    resumed = info.get("resumed_from")
    if resumed:
        side = (
            f"; {resumed['set_aside_records']} records the interrupted run wrote after it are in "
            f"{resumed['set_aside_file']}"
            if resumed.get("set_aside_file")
            else ""
        )
        print(f"resumed from {resumed['checkpoint']} (step {resumed['step']}){side}")
    if info.get("spikes"):
        print(describe_spikes(info["spikes"]))
    print(
        f"eval loss {info['eval_loss']:.4f}, perplexity {info['perplexity']:.2f}, "
        f"next-token accuracy {info['next_token_accuracy']:.4f} ({info['eval_tokens']} tokens)"
    )
    print(f"run folder {folder.path}: {', '.join(folder.parts())}")


def model_card_fields(info: dict) -> dict:
    """Keyword arguments for ``Trainer.create_model_card`` / ``push_to_hub``: tags that say
    which model family (``gpt2``, ``llama``) and init scheme the run started from and which
    corpus it saw."""
    corpus = info.get("corpus") or {}
    model_type = info.get("model_type", "gpt2")  # run folders written before Llama support
    return {
        "tags": ["hf-init", model_type, f"init-{info['init']['scheme']}"],
        "tasks": "text-generation",
        "dataset": corpus.get("name"),
    }


def describe_spikes(spikes: dict, listed: int = 10) -> str:
    """``run_info.json``'s ``spikes`` (:meth:`hf_init.lm.spikes.SpikeMonitor.summary`) in one
    line: how many steps were spikes among those monitored, the score, which steps (the first
    ``listed``) and the updates skipped."""
    rule = f"z > {spikes['threshold']:g} against the previous {spikes['window']} steps"
    if not spikes["steps_monitored"]:
        return f"spikes: none monitored ({rule}: no step had that many before it)"
    steps = spikes["spike_steps"]
    text = (
        f"spikes: {spikes['count']} in {spikes['steps_monitored']} monitored steps "
        f"(score {spikes['score']:.4f}; {rule})"
    )
    if steps:
        more = ", ..." if len(steps) > listed else ""
        text += (
            f": loss {spikes['loss_spikes']}, gradient norm {spikes['grad_norm_spikes']}, at "
            f"steps {', '.join(map(str, steps[:listed]))}{more}"
        )
    if spikes["skip_spike_updates"]:
        text += f"; skipped updates: {spikes['skipped_updates']} (--skip_spike_updates)"
    return text


def model_card_section(info: dict) -> str:
    """The model card's hf-init section: init scheme, size, data, steps, final perplexity and the
    Q/K/V variance figure embedded (a path inside the run folder, uploaded with it)."""
    corpus = info.get("corpus") or {}
    fig = next((f for f in info.get("figures", []) if f.endswith("qkv_variance_vs_step.png")), None)
    lines = [
        "",
        "## hf-init run",
        "",
        f"- model: {info.get('model_type', 'gpt2')} (stock `AutoModelForCausalLM` loads it)",
        f"- init scheme: `{info['init']['scheme']}`",
        f"- model size: {info['n_parameters']:,} parameters",
        f"- data: {corpus.get('name')}",
        f"- optimizer steps: {info['optimizer_steps']}",
        f"- final perplexity: {info['perplexity']:.2f}",
        *([f"- {describe_spikes(info['spikes'])}"] if info.get("spikes") else []),
        "",
    ]
    if fig:
        lines += [f"![Q/K/V weight variance per layer vs step]({fig})", ""]
    return "\n".join(lines)
