"""Raw text for GPT-2 pretraining: load documents, carve a validation split, report the corpus.

Three sources, chosen by :class:`~hf_init.lm.data.args.DataArguments` (in the style of
transformers' ``run_clm.py``):

* the built-in offline corpus (the default, :mod:`hf_init.lm.data.builtin_corpus`);
* a Hub dataset by name/config (``datasets.load_dataset``; ``streaming`` for large ones);
* local files (``.txt``, ``.json``, ``.jsonl``, ``.csv``, ``.tsv``, ``.parquet``) with a text
  column.

A *document* is one row of the text column: one help topic or one module's docstrings for the
built-in corpus; one non-empty line of a ``.txt`` file (``--sample_by``: or a paragraph, or the
whole file); one record of a JSON/CSV file; one row of a Hub dataset. Whatever
``--text_column`` names, the loaded splits hold one column, ``TEXT_COLUMN`` (``"text"``), which
the tokenizer trainer and :mod:`hf_init.lm.data.blocks` read.

Every ``datasets.map`` result is cached next to the data it was computed from, under a
deterministic fingerprint, so a second run reuses it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets

from hf_init.core.cli import first_line
from hf_init.lm.data.args import TEXT_COLUMN, DataArguments
from hf_init.lm.data.builtin_corpus import BUILTIN_CORPUS_NAME, builtin_dataset, corpus_stats

#: Local file extensions and the ``datasets`` builder that reads them.
FILE_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}
#: What each builder expects a local file to hold (for error messages).
_FILE_CONTENT = {
    "text": "UTF-8 text (one document per line, or per paragraph with --sample_by paragraph)",
    "json": "one JSON object per line (or a JSON list of objects) with a string text column "
    "(--text_column)",
    "csv": "a header row and a string text column (--text_column), comma-separated (.csv) or "
    "tab-separated (.tsv)",
    "parquet": "a Parquet table with a string text column (--text_column)",
}
_OFFLINE_HINT = (
    "offline, omit --dataset_name to use the built-in corpus (Python's own documentation), "
    "or pass local files with --train_file/--validation_file"
)


def _carve_validation(train, args: DataArguments):
    """Split ``train`` into (train, validation) deterministically by ``validation_split_seed``.

    Map-style: ``Dataset.train_test_split(test_size=p/100, seed=seed)``: exactly
    ``ceil(p/100 * n)`` documents go to validation, chosen by a seeded permutation; both parts are
    in permuted order. Streaming: document ``i`` goes to validation when a seeded hash of ``i``
    falls below ``p/100`` (about ``p`` percent; order kept).
    """
    fraction = args.validation_split_percentage / 100
    seed = args.validation_split_seed
    if isinstance(train, datasets.IterableDataset):

        def in_validation(_row, index):
            digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
            return int.from_bytes(digest, "big") < fraction * 2**64

        return (
            train.filter(lambda row, index: not in_validation(row, index), with_indices=True),
            train.filter(in_validation, with_indices=True),
        )
    if len(train) < 2:
        rule = ""
        if args.train_file and FILE_BUILDERS.get(Path(args.train_file).suffix.lower()) == "text":
            unit = "non-empty line" if args.sample_by == "line" else args.sample_by
            rule = (
                f" (a .txt file holds one document per {unit} with --sample_by {args.sample_by}; "
                "choose line, paragraph or document)"
            )
        raise ValueError(
            f"cannot carve a validation split from {len(train)} training document(s){rule}: "
            "pass --validation_file"
        )
    split = train.train_test_split(test_size=fraction, seed=seed)
    return split["train"], split["test"]


def _info_for(name: str, source: str, splits: list) -> dict[str, Any]:
    def checked(texts):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(
                    f"{source} {name!r}: document {i} of the text column is {type(t).__name__} "
                    f"{t!r:.40}; expected a string in every row (set --text_column)"
                )
            yield t

    n_docs, n_chars, sha = corpus_stats(
        checked(t for ds in splits for t in _iter_text(ds, TEXT_COLUMN))
    )
    return {
        "name": name,
        "source": source,
        "n_documents": n_docs,
        "n_chars": n_chars,
        "sha256": sha,
    }


def _iter_text(ds: datasets.Dataset, column: str) -> Iterable[str]:
    for batch in ds.select_columns([column]).iter(batch_size=10_000):
        yield from batch[column]


def load_raw_text(args: DataArguments) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Raw documents as ``{'train', 'validation'}`` with a single column 'text'
    (an ``IterableDatasetDict`` when ``args.streaming``), and the corpus info.

    Info: ``name``, ``source`` (builtin | hub | files), ``n_documents``, ``n_chars`` (Unicode code
    points) and ``sha256`` (``corpus_stats``) of the corpus *as loaded*, before the validation
    carve and before ``max_train_documents``: the built-in corpus in ``builtin_corpus()`` order;
    a Hub dataset or local files: the train split then the validation split (if one was given),
    in dataset order. ``train_documents``/``validation_documents`` count what each split holds after
    the carve and subsetting. Streaming: counts and hash are None (unknown without reading it all).
    """
    if args.dataset_name:
        raw, info = _load_hub(args)
    elif args.train_file:
        raw, info = _load_files(args)
    else:
        corpus = builtin_dataset(args.data_cache_dir)
        python = sys.version.split()[0]
        info = _info_for(
            f"{BUILTIN_CORPUS_NAME} (pydoc_data.topics + stdlib docstrings, Python {python})",
            "builtin",
            [corpus],
        )
        raw = datasets.DatasetDict({"train": corpus})

    if "validation" not in raw:
        train, validation = _carve_validation(raw["train"], args)
        raw["train"], raw["validation"] = train, validation
        info["validation"] = (
            f"carved: {args.validation_split_percentage}% of training documents, "
            f"seed {args.validation_split_seed}"
        )
    else:
        info["validation"] = "given"
    if args.max_train_documents is not None:
        if isinstance(raw["train"], datasets.IterableDataset):
            raw["train"] = raw["train"].take(args.max_train_documents)
        elif args.max_train_documents < len(raw["train"]):
            raw["train"] = raw["train"].select(range(args.max_train_documents))
        info["max_train_documents"] = args.max_train_documents
    if isinstance(raw["train"], datasets.Dataset):
        info["train_documents"] = len(raw["train"])
        info["validation_documents"] = len(raw["validation"])
    if args.streaming:
        # The built-in corpus is map-style even when streaming is asked for: streamed as promised
        splits = {
            k: ds if isinstance(ds, datasets.IterableDataset) else ds.to_iterable_dataset()
            for k, ds in ((k, raw[k]) for k in ("train", "validation"))
        }
        return datasets.IterableDatasetDict(splits), info
    return datasets.DatasetDict({"train": raw["train"], "validation": raw["validation"]}), info


def _only_text_column(raw, column: str, what: str):
    """Keep just the text column, renamed to 'text'."""
    for split, ds in raw.items():
        names = ds.column_names
        if names is not None and column not in names:
            raise ValueError(
                f"{what} split {split!r} has no column {column!r}; "
                f"its columns: {', '.join(names)} (set --text_column)"
            )
        feature = (ds.features or {}).get(column)
        if isinstance(feature, datasets.Value) and feature.dtype not in ("string", "large_string"):
            raise ValueError(
                f"{what} split {split!r}: column {column!r} holds {feature.dtype} values; expected "
                f"text (a string in every row; set --text_column)"
            )
        ds = ds.select_columns([column])  # lazy for streaming data whose columns are unknown yet
        if column != TEXT_COLUMN:
            ds = ds.rename_column(column, TEXT_COLUMN)
        raw[split] = ds
    return raw


def _load_hub(args: DataArguments):
    what = args.dataset_name + (f"/{args.dataset_config_name}" if args.dataset_config_name else "")
    try:
        raw = datasets.load_dataset(
            args.dataset_name,
            args.dataset_config_name,
            streaming=args.streaming,
            cache_dir=args.data_cache_dir,
        )
    except ConnectionError as err:  # offline mode or no network (datasets raises ConnectionError)
        raise ValueError(
            f"cannot reach the Hub for dataset {what!r} ({first_line(err)}); {_OFFLINE_HINT}"
        ) from None
    except FileNotFoundError as err:  # DatasetNotFoundError: no such dataset (or gated)
        raise ValueError(
            f"dataset {what!r} not found on the Hub ({first_line(err)}); {_OFFLINE_HINT}"
        ) from None
    if "train" not in raw:
        raise ValueError(f"dataset {what!r} has no 'train' split; its splits: {', '.join(raw)}")
    keep = {"train": raw["train"]}
    if "validation" in raw:
        keep["validation"] = raw["validation"]
    raw = (datasets.IterableDatasetDict if args.streaming else datasets.DatasetDict)(keep)
    raw = _only_text_column(raw, args.text_column, f"dataset {what!r}")
    if args.streaming:
        return raw, _streaming_info(what, "hub")
    return raw, _info_for(what, "hub", list(raw.values()))


def _streaming_info(name: str, source: str) -> dict[str, Any]:
    """The corpus info of streamed data: no size or hash (unknown without reading it all)."""
    return {
        "name": name,
        "source": source,
        "n_documents": None,
        "n_chars": None,
        "sha256": None,
        "streaming": True,
        "note": "streaming: size and hash unknown without reading the whole dataset",
    }


def _file_builder(files: dict[str, str]) -> str:
    """The ``datasets`` builder that reads every file of ``files`` (split -> path); ValueError
    (FileNotFoundError) naming the flag for a missing, empty, unknown or mixed file."""
    builders = set()
    for split, path in files.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--{split}_file {path!r} does not exist")
        ext = Path(path).suffix.lower()
        if ext not in FILE_BUILDERS:
            raise ValueError(
                f"--{split}_file {path!r} has extension {ext or '(none)'!r}; "
                f"allowed: {', '.join(FILE_BUILDERS)}"
            )
        if os.path.getsize(path) == 0:
            raise ValueError(
                f"--{split}_file {path!r} is empty; expected {_FILE_CONTENT[FILE_BUILDERS[ext]]}"
            )
        builders.add(FILE_BUILDERS[ext])
    if len(builders) > 1:
        raise ValueError(
            "--train_file and --validation_file must be the same kind of file, "
            f"got {sorted(builders)}"
        )
    return builders.pop()


def _builder_options(builder: str, args: DataArguments) -> dict[str, Any]:
    """The builder's options: a text file is one example per line (keeping its line break, like
    run_clm.py) unless --sample_by says otherwise; a .tsv file is tab-separated."""
    if builder == "text":
        return {"sample_by": args.sample_by, "keep_linebreaks": args.sample_by == "line"}
    if builder == "csv" and Path(args.train_file).suffix.lower() == ".tsv":
        return {"sep": "\t"}
    return {}


def _load_files(args: DataArguments):
    files = {"train": args.train_file}
    if args.validation_file:
        files["validation"] = args.validation_file
    builder = _file_builder(files)
    try:
        raw = datasets.load_dataset(
            builder,
            data_files={k: os.path.abspath(v) for k, v in files.items()},
            streaming=args.streaming,
            cache_dir=args.data_cache_dir,
            **_builder_options(builder, args),
        )
    except datasets.exceptions.DatasetGenerationError as err:  # unreadable: name it, no traceback
        cause = first_line(err.__cause__) if err.__cause__ is not None else first_line(err)
        raise ValueError(
            f"cannot read {', '.join(map(repr, files.values()))} as {builder} ({cause}); "
            f"expected {_FILE_CONTENT[builder]}"
        ) from None
    column = "text" if builder == "text" else args.text_column  # the text builder's column name
    raw = _only_text_column(raw, column, f"file {args.train_file!r}")
    if builder == "text" and args.sample_by == "line":  # a blank line is no example
        raw = raw.filter(lambda row: bool(row[TEXT_COLUMN].strip()))
    names = ", ".join(os.path.basename(p) for p in files.values())
    if args.streaming:
        return raw, _streaming_info(names, "files")
    return raw, _info_for(names, "files", [raw[k] for k in files])
