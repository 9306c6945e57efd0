"""GPT-2 pretraining from scratch with per-layer Q/K/V variance tracking: the run behind
``scripts/pretrain.py`` (its arguments are in :mod:`hf_init.lm.args`, what it reports in
:mod:`hf_init.lm.run_folder`).

Flow: YAML + flags -> (ModelArguments, DataArguments, RunArguments, TrainingArguments) ->
raw text -> tokenizer -> blocks -> GPT-2 with the init scheme -> Trainer with
:class:`~hf_init.lm.recorders.QKVVarianceCallback` -> eval (loss, perplexity, next-token
accuracy) -> model + tokenizer, figures, ``run_info.json``, printed summary.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hf_init.core.cli import RunStopped, UsageError
from hf_init.lm.args import model_config, parse_args
from hf_init.lm.run_folder import (
    RUN_INFO,
    checkpoint_step,
    interrupted,
    lost_peer,
    lost_peer_error,
    resolve_resume,
    unfinished_run_message,
)

# files and folders that mean "this folder already holds a run": everything a run writes
RUN_MARKERS = (
    "variance.jsonl",
    RUN_INFO,
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "training_args.bin",
    "trainer_state.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "runs",
    "figures",
    "checkpoint-*",
)


def check_output_dir(
    output_dir: str | os.PathLike, overwrite: bool, argv: list[str] | None = None
) -> list[str]:
    """Refuse an output folder that already holds a run (any of RUN_MARKERS), unless
    ``overwrite``; returns what it holds. A folder with no ``run_info.json`` holds a run that did
    not finish (interrupted, failed): the refusal says so and gives the exact command that
    continues it (``--resume_from_checkpoint true``, when it has a checkpoint) or restarts it
    (``--overwrite_output_dir true``), built from ``argv``. Writes nothing (see :mod:`hf_init.core.outputs`)."""
    from hf_init.core.outputs import check_output_dir as check
    from hf_init.core.outputs import existing_outputs

    found = existing_outputs(output_dir, RUN_MARKERS)
    if found and not overwrite and RUN_INFO not in found and argv is not None:
        raise UsageError(unfinished_run_message(Path(output_dir), found, argv))
    return check(output_dir, overwrite, RUN_MARKERS, flag="--overwrite_output_dir")


def next_token_metric():
    """compute_metrics / preprocess_logits_for_metrics for the local next-token accuracy."""
    import evaluate

    from hf_init.lm.metrics import metric_path

    metric = evaluate.load(metric_path("next_token_accuracy"), keep_in_memory=True)

    def preprocess_logits_for_metrics(logits, labels):
        return (logits[0] if isinstance(logits, tuple) else logits).argmax(dim=-1)

    def compute_metrics(eval_pred):
        out = metric.compute(predictions=eval_pred.predictions, references=eval_pred.label_ids)
        return {"accuracy": out["accuracy"], "accuracy_tokens": out["n_tokens"]}

    return compute_metrics, preprocess_logits_for_metrics


def run(argv: list[str], started: float | None = None) -> dict:
    """The whole pretraining job. Returns the run_info dict (also written to the run folder)."""
    started = time.time() if started is None else started
    # parsing checks every argument that needs no data (the dataclasses' __post_init__)
    model_args, data_args, run_args, training_args, config_path = parse_args(argv)
    hub_token = take_hub_token(training_args)
    argv = redact(argv, hub_token)
    # then, before anything is written: the output folder, the checkpoint to resume, the Hub
    resume = resolve_resume(training_args, run_args.overwrite_output_dir)
    found = (
        []
        if resume
        else check_output_dir(training_args.output_dir, run_args.overwrite_output_dir, argv)
    )
    if training_args.push_to_hub:
        check_hub_access()

    import torch
    from transformers import Trainer, default_data_collator, set_seed

    from hf_init.core.outputs import kept_until_success, write_json
    from hf_init.core.records import read_records, set_aside_after
    from hf_init.lm.data.blocks import tokenize_and_group
    from hf_init.lm.data.loaders import load_raw_text
    from hf_init.lm.data.tokenizer import load_or_train_tokenizer
    from hf_init.lm.guards import DivergenceStop, RecordsInCheckpoints
    from hf_init.lm.modeling import build_model, init_report
    from hf_init.lm.plots import plot_run
    from hf_init.lm.recorders import VARIANCE_FILE, build_recorders
    from hf_init.lm.run_folder import model_card_fields, model_card_section, print_summary, run_info
    from hf_init.lm.spikes import spike_summary
    from hf_init.lm.variance import format_summary, variance_table

    out = Path(training_args.output_dir)
    resumed = None
    if resume is not None:
        data_args.tokenizer_name = str(resume)  # the tokenizer the checkpoint was trained with
        step = checkpoint_step(resume)
        resumed = {
            "checkpoint": str(resume),
            "step": step,
            "set_aside_file": None,
            "set_aside_records": 0,
        }
        if training_args.process_index == 0:
            side = f"variance.after-step-{step}.interrupted.jsonl"
            moved = set_aside_after(out / VARIANCE_FILE, step, out / side)
            resumed.update(set_aside_file=side if moved else None, set_aside_records=moved)

    set_seed(training_args.seed)
    raw, corpus_info = load_raw_text(data_args)
    tokenizer = load_or_train_tokenizer(data_args, raw["train"])
    check_same_tokenizer(tokenizer, training_args.world_size)
    with training_args.main_process_first(desc="tokenize and group"):
        lm_data = tokenize_and_group(raw, tokenizer, data_args)
    train_data, eval_data = lm_data["train"], lm_data["validation"]
    block_size = data_args.block_size  # tokenize_and_group makes blocks of exactly this length

    config = model_config(
        model_args, vocab_size=len(tokenizer), n_positions=block_size, tokenizer=tokenizer
    )
    set_seed(training_args.seed)
    model = build_model(config)
    init_rows = init_report(model)  # the std each weight kind got, before training moves it
    tokenizer.model_max_length = (
        config.n_positions
    )  # saved with it: pipelines truncate to the context

    with kept_until_success(out, found, active=training_args.process_index == 0, keep_failed=True):
        compute_metrics, preprocess_logits = next_token_metric()
        trainer = card_trainer(Trainer)(
            model=model,
            args=training_args,
            train_dataset=train_data,
            eval_dataset=eval_data,
            processing_class=tokenizer,
            data_collator=default_data_collator,
            compute_metrics=compute_metrics,
            preprocess_logits_for_metrics=preprocess_logits,
        )
        trainer.add_callback(DivergenceStop())
        recorders = build_recorders(
            trainer,
            out,
            every=run_args.variance_steps,
            resumed_step=resumed["step"] if resumed else None,
            eval_dataset=eval_data,
            probe_blocks=run_args.attention_probe_blocks,
            spikes=run_args.spikes(),
        )
        trainer.add_callback(RecordsInCheckpoints(out, VARIANCE_FILE))

        first_step = resumed["step"] if resumed else 0
        try:
            train_result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except (KeyboardInterrupt, RunStopped) as err:
            for recorder in recorders:  # whole lines and TensorBoard events up to the last step
                recorder.flush()
            if isinstance(err, RunStopped):
                raise
            raise interrupted(out, trainer.state.global_step, argv) from None
        except RuntimeError as err:
            if not lost_peer(err, training_args.world_size):
                raise
            for recorder in recorders:  # no collective: the other ranks are gone
                recorder.flush()
            step, rank = trainer.state.global_step, training_args.process_index
            raise lost_peer_error(out, step, rank, argv, err) from None
        eval_metrics = trainer.evaluate()

        trainer.save_model(str(out))  # main process only; plain GPT-2 config
        # The Trainer's model card calls a model "fine-tuned from config._name_or_path" unless
        # that is a local folder; ours was built from scratch, so point it at the run folder.
        model.config._name_or_path = str(out)
        info: dict = {}
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(out))
            figures = plot_run(out / VARIANCE_FILE, out / "figures")
            table = variance_table(read_records(out / VARIANCE_FILE))
            info = run_info(
                argv=argv,
                config_path=config_path,
                args=(model_args, data_args, run_args),
                config=config,
                corpus=corpus_info,
                train_data=train_data,
                eval_data=eval_data,
                block_size=block_size,
                vocab_size=len(tokenizer),
                training_args=training_args,
                n_parameters=sum(p.numel() for p in model.parameters()),
                steps=trainer.state.global_step,
                train_result=train_result,
                eval_metrics=eval_metrics,
                variance_file=VARIANCE_FILE,
                table=table,
                figures=figures,
                out=out,
                started=started,
                init_rows=init_rows,
                resumed=resumed,
                first_step=first_step,
                spikes=spike_summary(recorders),
            )
            write_json(out / RUN_INFO, info)
            trainer.card_section = model_card_section(info)
            trainer.create_model_card(**model_card_fields(info))  # README.md in the run folder
            print_summary(info, format_summary(table), out)
        if training_args.push_to_hub:  # every rank calls it; only the main process uploads
            trainer.push_to_hub(
                commit_message=f"hf-init pretraining run, init scheme {config.init_scheme}",
                **model_card_fields(
                    info or {"init": {"scheme": config.init_scheme}, "corpus": corpus_info}
                ),
            )
    torch_dist_barrier(torch)
    return info


def take_hub_token(training_args) -> str | None:
    """Move ``--hub_token`` out of the arguments into the ``HF_TOKEN`` environment variable (where
    huggingface_hub reads it), so that it is never written to training_args.bin, run_info.json,
    TensorBoard's args text or a log. Returns it (for :func:`redact`)."""
    token = training_args.hub_token
    if token:
        os.environ["HF_TOKEN"] = token
        training_args.hub_token = None
    return token


def redact(argv: list[str], secret: str | None) -> list[str]:
    """``argv`` with ``secret`` replaced by ``<hub_token>`` (the command recorded in run_info.json)."""
    return [a.replace(secret, "<hub_token>") for a in argv] if secret else list(argv)


def card_trainer(trainer_class):
    """``trainer_class`` whose ``create_model_card`` (called by the script and again by
    ``push_to_hub``, which rewrites README.md) appends ``card_section`` when one is set."""

    class CardTrainer(trainer_class):
        card_section: str | None = None

        def create_model_card(self, *args, **kwargs):
            super().create_model_card(*args, **kwargs)
            if self.card_section and self.is_world_process_zero():
                with open(Path(self.args.output_dir) / "README.md", "a", encoding="utf-8") as f:
                    f.write(self.card_section)

    return CardTrainer


def check_hub_access(token: str | None = None) -> None:
    """Before anything is written: --push_to_hub needs the Hub and a login. One clear line if not."""
    try:
        from huggingface_hub import whoami

        whoami(token=token)
    except Exception as err:  # offline mode, no token, no network: all end the same way
        reason = " ".join(str(err).split())  # whole: a cut message loses the URL or the fix
        raise UsageError(
            f"--push_to_hub needs the Hugging Face Hub and a login (`hf auth login`), "
            f"which failed: {reason}; train without --push_to_hub and upload the run folder "
            f"later with `hf upload`"
        ) from None


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
        raise RuntimeError(
            f"ranks built different tokenizers ({digests}); pass --tokenizer_name with a saved one"
        )


def torch_dist_barrier(torch) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
