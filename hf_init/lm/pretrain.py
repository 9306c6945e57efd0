"""GPT-2 (or Llama) pretraining from scratch with per-layer Q/K/V variance tracking: the job behind
``scripts/pretrain.py`` and each run of the init-scheme study (its arguments are in
:mod:`hf_init.lm.args`, its folder and life in :mod:`hf_init.lm.run_folder`, what it reports in
:mod:`hf_init.lm.run_info`).

Flow: YAML + flags -> (ModelArguments, DataArguments, RunArguments, TrainingArguments) ->
raw text -> tokenizer -> blocks -> GPT-2 or Llama with the init scheme -> Trainer with
:class:`~hf_init.lm.recorders.QKVVarianceCallback` -> eval (loss, perplexity, next-token
accuracy) -> model + tokenizer, figures, ``run_info.json``, printed summary.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch
from transformers import Trainer, default_data_collator, set_seed

from hf_init.core.cli import RunStopped, UsageError
from hf_init.core.outputs import write_json
from hf_init.core.records import read_records
from hf_init.lm.args import model_config, parse_args
from hf_init.lm.data.blocks import tokenize_and_group
from hf_init.lm.data.loaders import load_raw_text
from hf_init.lm.data.tokenizer import load_or_train_tokenizer
from hf_init.lm.families import family_of
from hf_init.lm.guards import Diverged, DivergenceStop
from hf_init.lm.metrics import metric_path
from hf_init.lm.modeling import build_model, init_report
from hf_init.lm.plots import plot_run
from hf_init.lm.recorders import build_recorders, unwrap_model
from hf_init.lm.run_folder import (
    MODEL_CARD,
    RecordsInCheckpoints,
    interrupted,
    lost_peer,
    lost_peer_error,
    resolve_resume,
    resume_from,
    sigterm_as_interrupt,
)
from hf_init.lm.run_info import (
    RunSetup,
    diverged_info,
    model_card_fields,
    model_card_section,
    print_summary,
    run_info,
)
from hf_init.lm.spikes import StepValues
from hf_init.lm.variance import format_summary, variance_table


def run(argv: list[str], started: float | None = None) -> dict:
    """The whole pretraining job. Returns the run_info dict (also written to the run folder;
    empty on the processes other than the main one)."""
    started = time.time() if started is None else started
    with sigterm_as_interrupt():
        setup = set_up(argv, started)
        tokenizer, blocks = load_blocks(setup)
        model = build_initialized_model(setup, tokenizer)
        with setup.folder.replacing(setup.found, active=setup.is_main):
            trainer, recorders = make_trainer(setup, model, tokenizer, blocks)
            train_result = train(trainer, recorders, setup)
            eval_metrics = trainer.evaluate()
            info = save_run(setup, model, trainer, train_result, eval_metrics)
            if setup.training_args.push_to_hub:
                push(trainer, model, setup, info)
    barrier()
    return info


def set_up(argv: list[str], started: float) -> RunSetup:
    """Parse and check everything that needs no data before anything is written (the arguments,
    the output folder, the checkpoint to resume, the Hub); then, resuming, set aside the records
    the interrupted run wrote after its checkpoint."""
    model_args, data_args, run_args, training_args, config_path = parse_args(argv)
    hub_token = take_hub_token(training_args)
    setup = RunSetup(
        redact(argv, hub_token),
        config_path,
        model_args,
        data_args,
        run_args,
        training_args,
        started,
    )
    overwrite = run_args.overwrite_output_dir
    setup.checkpoint = resolve_resume(training_args, overwrite)
    if setup.checkpoint is None:
        setup.found = setup.folder.check_new_run(overwrite, setup.argv)
    if training_args.push_to_hub:
        check_hub_access()
    if setup.checkpoint is not None:
        data_args.tokenizer_name = str(setup.checkpoint)  # the tokenizer it was trained with
        setup.resumed = resume_from(setup.folder, setup.checkpoint, setup.is_main)
    return setup


def load_blocks(setup: RunSetup):
    """(tokenizer, {'train', 'validation'} blocks of ``--block_size`` tokens); the corpus info goes
    to ``setup``."""
    set_seed(setup.training_args.seed)
    raw, setup.corpus = load_raw_text(setup.data_args)
    tokenizer = load_or_train_tokenizer(setup.data_args, raw["train"])
    check_same_tokenizer(tokenizer, setup.training_args.world_size)
    with setup.training_args.main_process_first(desc="tokenize and group"):
        blocks = tokenize_and_group(raw, tokenizer, setup.data_args)
    return tokenizer, blocks


def build_initialized_model(setup: RunSetup, tokenizer):
    """The model (GPT-2 or Llama, ``--model_type``) with the init scheme, seeded; the std each
    weight kind got goes to ``setup``."""
    block_size = setup.data_args.block_size  # tokenize_and_group makes blocks of this length
    config = model_config(
        setup.model_args, vocab_size=len(tokenizer), n_positions=block_size, tokenizer=tokenizer
    )
    set_seed(setup.training_args.seed)
    model = build_model(config)
    setup.init_rows = init_report(model)  # before training moves the weights
    # saved with it: pipelines truncate to the context
    tokenizer.model_max_length = family_of(config).dims(config).n_positions
    return model


def make_trainer(setup: RunSetup, model, tokenizer, blocks):
    """(the Trainer with every callback of the run, the recorders it holds)."""
    compute_metrics, preprocess_logits = next_token_metric()
    trainer = CardTrainer(
        model=model,
        args=setup.training_args,
        train_dataset=blocks["train"],
        eval_dataset=blocks["validation"],
        processing_class=tokenizer,
        data_collator=default_data_collator,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits,
    )
    values = StepValues(trainer)  # the loss and gradient norm the Trainer computes
    trainer.add_callback(DivergenceStop(values))
    recorders = build_recorders(
        trainer,
        setup.folder.path,
        every=setup.run_args.variance_steps,
        resumed_step=setup.resumed["step"] if setup.resumed else None,
        eval_dataset=blocks["validation"],
        probe_blocks=setup.run_args.attention_probe_blocks,
        probe_every=setup.run_args.attention_probe_steps,
        spikes=setup.run_args.spikes(),
        step_values=values,
    )
    trainer.add_callback(RecordsInCheckpoints(setup.folder))
    return trainer, recorders


def train(trainer, recorders, setup: RunSetup):
    """``trainer.train`` (from the checkpoint when resuming). Stopped, interrupted or left alone
    by a rank that died: the records and TensorBoard events up to the last step are flushed to
    disk first; a diverged run writes ``diverged.json``; an interrupt or a lost rank becomes one
    line naming the command that continues the run."""
    checkpoint = setup.checkpoint
    args = setup.training_args
    try:
        return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except (KeyboardInterrupt, RunStopped) as err:
        for recorder in recorders:
            recorder.flush()
        if isinstance(err, Diverged) and setup.is_main:
            info = diverged_info(setup, unwrap_model(trainer.model), trainer, err.step, str(err))
            write_json(setup.folder.diverged, info)
        if isinstance(err, RunStopped):
            raise
        raise interrupted(setup.folder, trainer.state.global_step, setup.argv, err) from None
    except RuntimeError as err:
        if not lost_peer(err, args.world_size):
            raise
        for recorder in recorders:  # no collective: the other ranks are gone
            recorder.flush()
        step, rank = trainer.state.global_step, args.process_index
        raise lost_peer_error(setup.folder, step, rank, setup.argv, err) from None


def save_run(setup: RunSetup, model, trainer, train_result, eval_metrics: dict) -> dict:
    """Save the model (every process takes part); on the main process the tokenizer, figures,
    ``run_info.json`` and model card too, and print the summary. Returns the run_info dict
    (empty elsewhere)."""
    folder = setup.folder
    trainer.save_model(str(folder.path))  # main process only; the stock class's config
    # The Trainer's model card calls a model "fine-tuned from config._name_or_path" unless
    # that is a local folder; ours was built from scratch, so point it at the run folder.
    model.config._name_or_path = str(folder.path)
    if not trainer.is_world_process_zero():
        return {}
    trainer.processing_class.save_pretrained(str(folder.path))
    figures = plot_run(folder.records, folder.figures)
    table = variance_table(read_records(folder.records))
    info = run_info(setup, model, trainer, train_result, eval_metrics, table, figures)
    write_json(folder.info, info)
    trainer.card_section = model_card_section(info)
    trainer.create_model_card(**model_card_fields(info))  # README.md in the run folder
    print_summary(info, format_summary(table), folder)
    return info


def push(trainer, model, setup: RunSetup, info: dict) -> None:
    """Upload the run folder to the Hub: every process calls it, the main one uploads."""
    scheme = model.config.init_scheme
    trainer.push_to_hub(
        commit_message=f"hf-init pretraining run, init scheme {scheme}",
        **model_card_fields(
            info
            or {
                "model_type": family_of(model.config).model_type,
                "init": {"scheme": scheme},
                "corpus": setup.corpus,
            }
        ),
    )


class CardTrainer(Trainer):
    """The Trainer, whose model card (README.md, written again by ``push_to_hub`` before it
    uploads) ends with ``card_section`` once that is set."""

    card_section: str | None = None

    def create_model_card(self, *args, **kwargs):
        super().create_model_card(*args, **kwargs)
        if self.card_section and self.is_world_process_zero():
            with open(Path(self.args.output_dir) / MODEL_CARD, "a", encoding="utf-8") as f:
                f.write(self.card_section)


def next_token_metric():
    """compute_metrics / preprocess_logits_for_metrics for the local next-token accuracy.
    ``evaluate`` is imported here, not with the module: it pulls in transformers' pipelines
    (about a second), which a run that stops at a bad flag never needs."""
    import evaluate

    metric = evaluate.load(metric_path("next_token_accuracy"), keep_in_memory=True)

    def preprocess_logits_for_metrics(logits, labels):
        return (logits[0] if isinstance(logits, tuple) else logits).argmax(dim=-1)

    def compute_metrics(eval_pred):
        out = metric.compute(predictions=eval_pred.predictions, references=eval_pred.label_ids)
        return {"accuracy": out["accuracy"], "accuracy_tokens": out["n_tokens"]}

    return compute_metrics, preprocess_logits_for_metrics


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
    """``argv`` with ``secret`` replaced by ``<hub_token>`` (the command run_info.json records)."""
    return [a.replace(secret, "<hub_token>") for a in argv] if secret else list(argv)


def check_hub_access(token: str | None = None) -> None:
    """Before anything is written: --push_to_hub needs the Hub and a login; one line if not."""
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
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    digests = [None] * world_size
    torch.distributed.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(
            f"ranks built different tokenizers ({digests}); pass --tokenizer_name with a saved one"
        )


def barrier() -> None:
    """Wait for every process of a distributed run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
