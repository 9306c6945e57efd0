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
    eos_id = _separator_id(tokenizer, args)
    streaming = isinstance(raw, datasets.IterableDatasetDict)

    def guard(desc: str) -> contextlib.AbstractContextManager:
        return main_process_first(desc=desc) if main_process_first else contextlib.nullcontext()

    with guard("tokenizing"):
        tokenized = raw.map(
            _tokenize_batch,
            batched=True,
            remove_columns=[TEXT_COLUMN],
            fn_kwargs={"tokenizer": tokenizer, "eos_id": eos_id},
            **_map_options(args, streaming, "Tokenizing"),
        )
    with guard("grouping"):
        grouped = tokenized.map(
            _group_batch,
            batched=True,
            batch_size=args.group_batch_size,
            fn_kwargs={"block_size": args.block_size},
            **_map_options(args, streaming, f"Grouping into blocks of {args.block_size}"),
        )
    if streaming:
        return _first_blocks(grouped, args, lambda ds, n: ds.take(n))
    for split, ds in grouped.items():
        if len(ds) == 0:
            raise ValueError(_too_short(split, tokenized[split], args.block_size))
    return _first_blocks(grouped, args, lambda ds, n: ds.select(range(n)) if n < len(ds) else ds)


def _separator_id(tokenizer, args: DataArguments) -> int | None:
    """The eos id appended to every non-empty document, None without ``args.add_eos_token``;
    ValueError when the tokenizer has none."""
    if not args.add_eos_token:
        return None
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "the tokenizer has no eos token to separate documents; pass --add_eos_token false"
        )
    return tokenizer.eos_token_id


def _map_options(args: DataArguments, streaming: bool, desc: str) -> dict[str, Any]:
    """``datasets.map``'s cache, worker and progress-bar options (none for streaming data:
    ``IterableDataset.map`` has no cache, workers or progress bar)."""
    if streaming:
        return {}
    return {
        "num_proc": args.preprocessing_num_workers,
        "load_from_cache_file": not args.overwrite_cache,
        "desc": desc,
    }


def _first_blocks(grouped, args: DataArguments, first):
    """``grouped`` with its train and validation splits cut to ``max_train_samples`` and
    ``max_eval_samples`` blocks by ``first(split, n)`` (where a limit is set)."""
    for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples)):
        if limit is not None:
            grouped[split] = first(grouped[split], limit)
    return grouped


def _too_short(split: str, tokenized, block_size: int) -> str:
    """The error of a split with fewer tokens than one block, stating both numbers."""
    batches = tokenized.iter(batch_size=10_000)
    n_tokens = sum(len(ids) for batch in batches for ids in batch["input_ids"])
    return (
        f"the {split} split has {n_tokens} tokens, fewer than one block of --block_size "
        f"{block_size}; use more text or a smaller --block_size"
    )
