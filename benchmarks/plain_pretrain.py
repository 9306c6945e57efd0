"""The peer of ``scripts/pretrain.py`` in ``benchmarks/job_overhead.py --whole``: the same job as a
user of plain transformers writes it (run_clm.py's steps), with no hf_init import.

    python benchmarks/plain_pretrain.py SPEC.json OUTPUT_DIR

SPEC.json (written by job_overhead.py from the job's own parsed arguments): the saved built-in
corpus, the tokenizer folder, the validation carve, the block size, the model shape and the
``TrainingArguments``. Steps: load the text, carve the validation split, tokenize (eos after each
document), group into blocks, stock ``GPT2LMHeadModel(GPT2Config(...))``, ``Trainer.train``,
``Trainer.evaluate`` (loss and next-token accuracy on the first held-out blocks), ``save_model``.
Prints one JSON line with its ``train_runtime`` and evaluation.
"""

import json
import math
import sys
from itertools import chain

import datasets
import numpy as np
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)


def main(spec_path: str, output_dir: str) -> None:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    args = TrainingArguments(**{**spec["training_args"], "output_dir": output_dir})
    set_seed(args.seed)
    raw = datasets.load_from_disk(spec["corpus"])
    fraction = spec["validation_percentage"] / 100
    split = raw.train_test_split(test_size=fraction, seed=spec["split_seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    eos, block_size = tokenizer.eos_token_id, spec["block_size"]

    def tokenize(batch):  # eos after each non-empty document
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [s + [eos] if text else s for s, text in zip(ids, batch["text"])]}

    def group(batch):  # consecutive blocks of each batch's token stream; its remainder dropped
        stream = list(chain.from_iterable(batch["input_ids"]))
        starts = range(0, len(stream) - block_size + 1, block_size)
        ids = [stream[i : i + block_size] for i in starts]
        return {"input_ids": ids, "attention_mask": [[1] * block_size for _ in ids], "labels": ids}

    tokenized = datasets.DatasetDict(split).map(tokenize, batched=True, remove_columns=["text"])
    blocks = tokenized.map(group, batched=True, batch_size=spec["group_batch_size"])
    train_blocks, eval_blocks = blocks["train"], blocks["test"]
    if spec["train_blocks"] is not None:
        train_blocks = train_blocks.select(range(min(spec["train_blocks"], len(train_blocks))))
    if spec["eval_blocks"] is not None:
        eval_blocks = eval_blocks.select(range(min(spec["eval_blocks"], len(eval_blocks))))

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=block_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        **spec["model"],
    )
    trainer = Trainer(
        model=GPT2LMHeadModel(config),
        args=args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        compute_metrics=accuracy,
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(dim=-1),
    )
    train_result = trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()
    print(
        json.dumps(
            {
                "train_runtime": train_result.metrics["train_runtime"],
                "eval_loss": metrics["eval_loss"],
                "perplexity": math.exp(metrics["eval_loss"]),
                "eval_accuracy": metrics["eval_accuracy"],
                "train_blocks": len(train_blocks),
                "eval_blocks": len(eval_blocks),
            }
        )
    )


def accuracy(eval_pred):
    """Next-token accuracy: the prediction at position t against the label at t + 1."""
    predictions, labels = eval_pred
    return {"accuracy": float(np.mean(predictions[:, :-1] == labels[:, 1:]))}


if __name__ == "__main__":
    main(*sys.argv[1:])
