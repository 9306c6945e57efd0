"""Tokenizers for pretraining: a ByteLevel BPE trained with ``tokenizers``, or one loaded by name.

The trained tokenizer is a plain ``PreTrainedTokenizerFast`` (``TokenizersBackend`` in transformers
5.x): after ``save_pretrained(folder)`` the stock ``AutoTokenizer.from_pretrained(folder)`` loads it
with no custom code. Its only special token is GPT-2's ``<|endoftext|>``, used as bos, eos, unk and
pad (pad = eos, the usual GPT-2 convention; the collator masks padding through the attention mask).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from hf_init.core.cli import first_line
from hf_init.lm.data.args import TEXT_COLUMN

if TYPE_CHECKING:  # imported lazily: transformers takes seconds to import
    from transformers import PreTrainedTokenizerFast

    from hf_init.lm.data.args import DataArguments

EOS_TOKEN = "<|endoftext|>"
#: 256 byte symbols of the ByteLevel alphabet plus <|endoftext|>.
MIN_VOCAB_SIZE = 257
#: With ``--streaming`` the training split has no known end: the BPE trains on this many documents.
STREAMING_TOKENIZER_DOCUMENTS = 50_000


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a ByteLevel BPE tokenizer (GPT-2 style, no prefix space) on ``texts``.

    ``vocab_size`` counts the 256 byte symbols, the merges and ``<|endoftext|>``; the result has at
    most that many entries (fewer when the text runs out of pairs seen at least twice). Training is
    deterministic for a given text and ``vocab_size``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be an integer >= {MIN_VOCAB_SIZE} (256 byte symbols + {EOS_TOKEN}), "
            f"got {vocab_size!r}"
        )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_batches(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_or_train_tokenizer(args: DataArguments, raw_train) -> PreTrainedTokenizerFast:
    """``args.tokenizer_name`` (a local folder, or a Hub id) if given, else a ByteLevel BPE of
    ``args.vocab_size`` trained on the training split ``raw_train`` (never on validation text),
    as ``load_raw_text`` returns it (text in column ``TEXT_COLUMN``).

    With a map-style ``raw_train`` every document trains the BPE (``args.max_train_documents``,
    applied by ``load_raw_text``, is the knob that makes this fast); with a streaming one, the
    first ``args.tokenizer_train_documents`` documents (default
    ``STREAMING_TOKENIZER_DOCUMENTS``). A Hub id that cannot be fetched raises ValueError naming
    the offline alternatives.
    """
    if args.tokenizer_name:
        return _load_tokenizer(args.tokenizer_name)
    from datasets import IterableDataset

    column = TEXT_COLUMN
    if isinstance(raw_train, IterableDataset):
        limit = args.tokenizer_train_documents or STREAMING_TOKENIZER_DOCUMENTS
        texts = (row[column] for row in raw_train.select_columns([column]).take(limit))
    else:
        if args.tokenizer_train_documents is not None:
            raw_train = raw_train.select(range(min(args.tokenizer_train_documents, len(raw_train))))
        texts = (
            text
            for batch in raw_train.select_columns([column]).iter(batch_size=1000)
            for text in batch[column]
        )
    return train_bpe_tokenizer((t for t in texts if t), args.vocab_size)


def _load_tokenizer(name: str) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    if os.path.isdir(name):
        try:
            return AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"folder {name!r} holds no loadable tokenizer ({first_line(err)}); pass a folder "
                "written by save_pretrained (with tokenizer.json), or omit --tokenizer_name to "
                "train a ByteLevel BPE"
            ) from None
    if os.path.exists(name):
        raise ValueError(
            f"--tokenizer_name {name!r} is a file; pass a folder written by save_pretrained"
        )
    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as err:  # offline, unreachable, or no such repo; ConnectionError is an OSError
        raise ValueError(
            f"cannot load tokenizer {name!r}: it is no local folder and the Hub did not provide it "
            f"({first_line(err)}); offline, omit --tokenizer_name to train a ByteLevel BPE on the "
            "training text (--vocab_size), or pass a local folder saved with save_pretrained"
        ) from None
