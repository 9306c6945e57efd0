"""Raw documents to training blocks: tokenize every document (eos after each), concatenate, cut
into blocks of ``block_size`` token ids (see :func:`tokenize_and_group`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from itertools import chain
from typing import Any

import datasets

from hf_init.lm.data.args import TEXT_COLUMN, DataArguments


def _tokenize_batch(batch: dict[str, list], tokenizer, eos_id: int | None) -> dict[str, list]:
    ids = tokenizer(batch[TEXT_COLUMN], add_special_tokens=False, return_attention_mask=False)[
        "input_ids"
    ]
    if eos_id is not None:
        ids = [seq + [eos_id] if text else seq for seq, text in zip(ids, batch[TEXT_COLUMN])]
    return {"input_ids": ids}


def _group_batch(batch: dict[str, list], block_size: int) -> dict[str, list]:
    stream = list(chain.from_iterable(batch["input_ids"]))
    usable = len(stream) // block_size * block_size
    blocks = [stream[i : i + block_size] for i in range(0, usable, block_size)]
    return {
        "input_ids": blocks,
        "attention_mask": [[1] * block_size for _ in blocks],
        "labels": [list(b) for b in blocks],
    }


def tokenize_and_group(
    raw,
    tokenizer,
    args: DataArguments,
    main_process_first: Callable[..., contextlib.AbstractContextManager] | None = None,
):
    """Tokenize every document and cut the token stream into blocks of ``args.block_size``.

    Each document becomes its token ids (no special tokens added by the tokenizer), followed by
    ``tokenizer.eos_token_id`` when the document is non-empty and ``args.add_eos_token``. Within
    each ``datasets.map`` batch of ``args.group_batch_size`` documents (per worker shard when
    ``preprocessing_num_workers`` > 1) the ids are concatenated in order and cut into consecutive
    blocks; the last partial block of each batch is dropped. A split of one batch therefore gives
    ``floor(n_tokens / block_size)`` blocks whose concatenation is the start of the concatenated
    encoding. Columns: ``input_ids``, ``attention_mask`` (all ones), ``labels`` (a copy of
    ``input_ids``; the model shifts them). Then ``max_train_samples``/``max_eval_samples`` keep
    the first blocks.

    Map-style data: both maps are cached next to the data (fingerprints are deterministic, so a
    rerun with the same data, tokenizer and arguments reuses them; ``overwrite_cache`` recomputes).
    ``main_process_first`` is a context-manager factory such as
    ``TrainingArguments.main_process_first`` (called with ``desc=``) so that only the main process
    computes while the others wait and read the cache.

    Raises ValueError when a split has fewer tokens than one block (stating both numbers).
    Streaming data is mapped lazily, without that check (nothing is read here).
    """
    eos_id = None
    if args.add_eos_token:
        eos_id = tokenizer.eos_token_id
        if eos_id is None:
            raise ValueError(
                "the tokenizer has no eos token to separate documents; pass --add_eos_token false"
            )
    streaming = isinstance(raw, datasets.IterableDatasetDict)

    def guard(desc: str) -> contextlib.AbstractContextManager:
        return main_process_first(desc=desc) if main_process_first else contextlib.nullcontext()

    def cached(
        desc: str,
    ) -> dict[str, Any]:  # IterableDataset.map has no cache, workers or progress bar
        if streaming:
            return {}
        return {
            "num_proc": args.preprocessing_num_workers,
            "load_from_cache_file": not args.overwrite_cache,
            "desc": desc,
        }

    with guard("tokenizing"):
        tokenized = raw.map(
            _tokenize_batch,
            batched=True,
            remove_columns=[TEXT_COLUMN],
            fn_kwargs={"tokenizer": tokenizer, "eos_id": eos_id},
            **cached("Tokenizing"),
        )
    with guard("grouping"):
        grouped = tokenized.map(
            _group_batch,
            batched=True,
            batch_size=args.group_batch_size,
            fn_kwargs={"block_size": args.block_size},
            **cached(f"Grouping into blocks of {args.block_size}"),
        )
    if streaming:
        if args.max_train_samples is not None:
            grouped["train"] = grouped["train"].take(args.max_train_samples)
        if args.max_eval_samples is not None:
            grouped["validation"] = grouped["validation"].take(args.max_eval_samples)
        return grouped

    for split, ds in grouped.items():
        if len(ds) == 0:
            batches = tokenized[split].iter(batch_size=10_000)
            n_tokens = sum(len(ids) for batch in batches for ids in batch["input_ids"])
            raise ValueError(
                f"the {split} split has {n_tokens} tokens, fewer than one block of --block_size "
                f"{args.block_size}; use more text or a smaller --block_size"
            )
    for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples)):
        if limit is not None and limit < len(grouped[split]):
            grouped[split] = grouped[split].select(range(limit))
    return grouped
