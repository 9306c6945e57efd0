"""Text corpora for GPT-2 pretraining: load raw text, carve a validation split, tokenize, group.

Three sources, chosen by ``DataArguments`` (in the style of transformers' ``run_clm.py``):

* the built-in offline corpus (the default): English text that Python itself ships, the
  ``pydoc_data.topics`` help pages and the docstrings of the standard library (read from source
  with ``ast``, nothing is imported); about 2.2 million characters, the same wherever the same
  Python build is installed (distributions patch the standard library: the info's sha256 tells);
* a Hub dataset by name/config (``datasets.load_dataset``; ``streaming`` for large ones);
* local files (``.txt``, ``.json``, ``.jsonl``, ``.csv``) with a text column.

A *document* is one row of the text column: one help topic or one module's docstrings for the
built-in corpus; one blank-line-separated paragraph of a ``.txt`` file; one record of a JSON/CSV file;
one row of a Hub dataset. Documents are tokenized, followed by the eos token (when non-empty and
``add_eos_token``), concatenated and cut into blocks of ``block_size`` tokens (see
``tokenize_and_group``).

Caches live under the Hugging Face datasets cache (``$HF_DATASETS_CACHE``, by default
``~/.cache/huggingface/datasets``) or ``--data_cache_dir``: the built-in corpus is written once to
``<cache>/hf_init/builtin_corpus/<key>/`` and every ``datasets.map`` result is cached next to the
data it was computed from, under a deterministic fingerprint, so a second run reuses it.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
import tokenize as py_tokenize
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable

import datasets

from hf_init.cli import first_line

#: Local file extensions and the ``datasets`` builder that reads them.
FILE_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv"}
BUILTIN_CORPUS_NAME = "python-docs"
# Bump when the way the built-in corpus is extracted changes (invalidates its disk cache).
_BUILTIN_FORMAT = 1
#: What each builder expects a local file to hold (for error messages).
_FILE_CONTENT = {
    "text": "UTF-8 text, documents separated by blank lines",
    "json": "one JSON object per line (or a JSON list of objects) with a string text column (--text_column)",
    "csv": "a header row and a string text column (--text_column)",
}
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "turtledemo"}
_OFFLINE_HINT = (
    "offline, omit --dataset_name to use the built-in corpus (Python's own documentation), "
    "or pass local files with --train_file/--validation_file"
)


@dataclass
class DataArguments:
    """Where the training text comes from and how it becomes blocks of token ids."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset to train on (e.g. wikitext). Default: the built-in offline corpus."},
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration of --dataset_name (e.g. wikitext-103-raw-v1)."}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the Hub dataset instead of downloading it (no map cache, no num_proc)."},
    )
    train_file: str | None = field(
        default=None,
        metadata={"help": "Local training text: .txt (one document per paragraph), .json/.jsonl or .csv."},
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Local validation text (same format as --train_file). Default: carved from train."},
    )
    text_column: str = field(default="text", metadata={"help": "Column that holds the text."})
    validation_split_percentage: int = field(
        default=5,
        metadata={
            "help": "Percent of training documents held out for validation when the data has no "
            "validation split (chosen by --validation_split_seed)."
        },
    )
    validation_split_seed: int = field(
        default=42,
        metadata={
            "help": "Seed of the train/validation carve. Separate from --seed so that runs comparing "
            "init schemes or seeds see the same split."
        },
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per training sequence."})
    add_eos_token: bool = field(
        default=True,
        metadata={
            "help": "Append the eos token after every non-empty document. Turn off for datasets whose "
            "rows are lines of longer documents (e.g. wikitext)."
        },
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for datasets.map (tokenize, group)."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute cached datasets.map results."})
    data_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Cache folder for datasets (default: the Hugging Face datasets cache)."},
    )
    max_train_documents: int | None = field(
        default=None,
        metadata={
            "help": "Keep only the first N training documents after the validation carve (for quick runs "
            "and tests: the tokenizer then trains on less text)."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training blocks (after grouping)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation blocks (after grouping)."}
    )
    group_batch_size: int = field(
        default=1000,
        metadata={
            "help": "Documents per datasets.map batch when grouping; each batch drops its last "
            "partial block (fewer than block_size tokens)."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer: a local folder or Hub id. Default: train a ByteLevel BPE on the train split."},
    )
    vocab_size: int = field(default=1024, metadata={"help": "Vocabulary size of the trained BPE tokenizer."})
    tokenizer_train_documents: int | None = field(
        default=None,
        metadata={
            "help": "Train the BPE on the first N training documents (default: all of them; "
            "50,000 when streaming)."
        },
    )


# ---------------------------------------------------------------------------------------------
# The built-in corpus


def _stdlib_sources() -> list[Path]:
    """Standard-library ``.py`` files in a fixed (sorted) order, without tests and third-party code."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(("test", "config-")))
        found.extend(Path(folder) / f for f in sorted(files) if f.endswith(".py") and not f.startswith("test"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _docstrings(tree: ast.AST) -> Iterable[str]:
    """Docstrings of a module, its classes and functions (nested too), in source order."""
    if isinstance(tree, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(tree, clean=True)
        if doc:
            yield doc
        for node in tree.body:
            yield from _docstrings(node)


def _build_builtin_corpus() -> list[str]:
    import pydoc_data.topics

    documents = [text.strip() for _, text in sorted(pydoc_data.topics.topics.items())]
    documents = [d for d in documents if d]
    for path in _stdlib_sources():
        try:
            with py_tokenize.open(path) as f:  # honours PEP 263 coding cookies
                tree = ast.parse(f.read())
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        doc = "\n\n".join(_docstrings(tree))
        if doc:
            documents.append(doc)
    return documents


def _builtin_cache_key() -> str:
    """Changes when Python, its standard library or the extraction changes."""
    import pydoc_data.topics

    h = hashlib.sha256(f"{_BUILTIN_FORMAT}|{sys.version}|{sys.platform}".encode())
    for path in [Path(pydoc_data.topics.__file__), *_stdlib_sources()]:
        st = path.stat()
        h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE)


def _builtin_dataset(cache_dir: str | None = None) -> datasets.Dataset:
    """The built-in corpus as a disk-backed Dataset (column 'text'), extracted once and cached.

    Disk-backed matters: ``datasets.map`` caches results only for datasets that live in files.
    """
    folder = _cache_root(cache_dir) / "hf_init" / "builtin_corpus" / _builtin_cache_key()
    if not (folder / "dataset_info.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        try:
            docs = _build_builtin_corpus()
            # from_dict fingerprints the content, so downstream map caches are reused across runs.
            datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp))
            with contextlib.suppress(OSError):  # another process may have won the race: keep theirs
                os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(folder))


def builtin_corpus(cache_dir: str | None = None) -> list[str]:
    """The built-in offline corpus: one document per ``pydoc_data.topics`` help topic (sorted by
    topic name), then one per standard-library module (sorted by path; its module, class and
    function docstrings joined by blank lines; test folders and files left out, files that do not
    parse skipped). Deterministic for a given Python installation.

    The first call extracts it from source (a few seconds) and caches it on disk; later calls read
    the cache.
    """
    return list(_builtin_dataset(cache_dir)["text"])


def corpus_sha256(documents: Iterable[str]) -> str:
    """SHA-256 of the documents in order, each UTF-8 encoded, separated by one NUL byte:
    ``sha256(b"\\0".join(d.encode("utf-8") for d in documents))``."""
    return _corpus_stats(documents)[2]


def _corpus_stats(documents: Iterable[str]) -> tuple[int, int, str]:
    """(number of documents, number of characters (code points), ``corpus_sha256``) in one pass."""
    h = hashlib.sha256()
    n_docs = n_chars = 0
    for doc in documents:
        if n_docs:
            h.update(b"\0")
        h.update(doc.encode("utf-8"))
        n_docs += 1
        n_chars += len(doc)
    return n_docs, n_chars, h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Loading raw text


def _check_args(args: DataArguments) -> None:
    if args.dataset_name and (args.train_file or args.validation_file):
        raise ValueError("pass either --dataset_name or --train_file/--validation_file, not both")
    if args.validation_file and not args.train_file:
        raise ValueError("--validation_file needs --train_file")
    if not 0 < args.validation_split_percentage < 100:
        raise ValueError(
            f"--validation_split_percentage must be between 1 and 99, got {args.validation_split_percentage}"
        )
    if args.block_size < 1:
        raise ValueError(f"--block_size must be a positive number of tokens, got {args.block_size}")
    for name in ("max_train_documents", "max_train_samples", "max_eval_samples", "tokenizer_train_documents"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}")
    if args.group_batch_size < 1:
        raise ValueError(f"--group_batch_size must be a positive integer, got {args.group_batch_size}")


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
        raise ValueError(
            f"cannot carve a validation split from {len(train)} training document(s): pass --validation_file"
        )
    split = train.train_test_split(test_size=fraction, seed=seed)
    return split["train"], split["test"]


def _info_for(name: str, source: str, splits: list) -> dict[str, Any]:
    def checked(texts):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"{source} {name!r}: document {i} of the text column is {type(t).__name__} "
                                 f"{t!r:.40}; expected a string in every row (set --text_column)")
            yield t

    n_docs, n_chars, sha = _corpus_stats(checked(t for ds in splits for t in _iter_text(ds, "text")))
    return {"name": name, "source": source, "n_documents": n_docs, "n_chars": n_chars, "sha256": sha}


def _iter_text(ds: datasets.Dataset, column: str) -> Iterable[str]:
    for batch in ds.select_columns([column]).iter(batch_size=10_000):
        yield from batch[column]


def load_raw_text(args: DataArguments) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Raw documents as ``{'train', 'validation'}`` with a single column 'text'
    (an ``IterableDatasetDict`` when ``args.streaming``), and the corpus info.

    Info: ``name``, ``source`` (builtin | hub | files), ``n_documents``, ``n_chars`` (Unicode code
    points) and ``sha256`` (``corpus_sha256``) of the corpus *as loaded*, before the validation carve
    and before ``max_train_documents``: the built-in corpus in ``builtin_corpus()`` order; a Hub
    dataset or local files: the train split then the validation split (if one was given), in
    dataset order. ``train_documents``/``validation_documents`` count what each split holds after
    the carve and subsetting. Streaming: counts and hash are None (unknown without reading it all).
    """
    _check_args(args)
    if args.dataset_name:
        raw, info = _load_hub(args)
    elif args.train_file:
        raw, info = _load_files(args)
    else:
        corpus = _builtin_dataset(args.data_cache_dir)
        info = _info_for(
            f"{BUILTIN_CORPUS_NAME} (pydoc_data.topics + stdlib docstrings, Python {sys.version.split()[0]})",
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
        # The built-in corpus is map-style even when streaming is asked for: stream it as promised.
        splits = {k: ds if isinstance(ds, datasets.IterableDataset) else ds.to_iterable_dataset()
                  for k, ds in ((k, raw[k]) for k in ("train", "validation"))}
        return datasets.IterableDatasetDict(splits), info
    return datasets.DatasetDict({"train": raw["train"], "validation": raw["validation"]}), info


def _only_text_column(raw, column: str, what: str):
    """Keep just the text column, renamed to 'text'."""
    for split, ds in raw.items():
        names = ds.column_names
        if names is not None and column not in names:
            raise ValueError(
                f"{what} split {split!r} has no column {column!r}; its columns: {', '.join(names)} "
                f"(set --text_column)"
            )
        feature = (ds.features or {}).get(column)
        if isinstance(feature, datasets.Value) and feature.dtype not in ("string", "large_string"):
            raise ValueError(f"{what} split {split!r}: column {column!r} holds {feature.dtype} values; expected "
                             f"text (a string in every row; set --text_column)")
        ds = ds.select_columns([column])  # lazy for streaming data whose columns are unknown yet
        if column != "text":
            ds = ds.rename_column(column, "text")
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
        raise ValueError(f"cannot reach the Hub for dataset {what!r} ({first_line(err)}); {_OFFLINE_HINT}") from None
    except FileNotFoundError as err:  # DatasetNotFoundError: no such dataset (or gated)
        raise ValueError(f"dataset {what!r} not found on the Hub ({first_line(err)}); {_OFFLINE_HINT}") from None
    if "train" not in raw:
        raise ValueError(f"dataset {what!r} has no 'train' split; its splits: {', '.join(raw)}")
    keep = {"train": raw["train"]}
    if "validation" in raw:
        keep["validation"] = raw["validation"]
    raw = (datasets.IterableDatasetDict if args.streaming else datasets.DatasetDict)(keep)
    raw = _only_text_column(raw, args.text_column, f"dataset {what!r}")
    if args.streaming:
        info = {"name": what, "source": "hub", "n_documents": None, "n_chars": None, "sha256": None,
                "streaming": True, "note": "streaming: size and hash unknown without reading the whole dataset"}
    else:
        info = _info_for(what, "hub", list(raw.values()))
    return raw, info


def _load_files(args: DataArguments):
    files = {"train": args.train_file}
    if args.validation_file:
        files["validation"] = args.validation_file
    builders = set()
    for split, path in files.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--{split}_file {path!r} does not exist")
        ext = Path(path).suffix.lower()
        if ext not in FILE_BUILDERS:
            raise ValueError(
                f"--{split}_file {path!r} has extension {ext or '(none)'!r}; allowed: {', '.join(FILE_BUILDERS)}"
            )
        if os.path.getsize(path) == 0:
            raise ValueError(f"--{split}_file {path!r} is empty; expected {_FILE_CONTENT[FILE_BUILDERS[ext]]}")
        builders.add(FILE_BUILDERS[ext])
    if len(builders) > 1:
        raise ValueError(f"--train_file and --validation_file must be the same kind of file, got {sorted(builders)}")
    builder = builders.pop()
    kwargs: dict[str, Any] = {"sample_by": "paragraph"} if builder == "text" else {}
    try:
        raw = datasets.load_dataset(
            builder,
            data_files={k: os.path.abspath(v) for k, v in files.items()},
            streaming=args.streaming,
            cache_dir=args.data_cache_dir,
            **kwargs,
        )
    except datasets.exceptions.DatasetGenerationError as err:  # unreadable file: name it, no traceback
        cause = first_line(err.__cause__) if err.__cause__ is not None else first_line(err)
        raise ValueError(f"cannot read {', '.join(map(repr, files.values()))} as {builder} ({cause}); "
                         f"expected {_FILE_CONTENT[builder]}") from None
    raw = _only_text_column(raw, args.text_column if builder != "text" else "text", f"file {args.train_file!r}")
    names = ", ".join(os.path.basename(p) for p in files.values())
    if args.streaming:
        info = {"name": names, "source": "files", "n_documents": None, "n_chars": None, "sha256": None,
                "streaming": True, "note": "streaming: size and hash unknown without reading the whole dataset"}
    else:
        info = _info_for(names, "files", [raw[k] for k in files])
    return raw, info


# ---------------------------------------------------------------------------------------------
# Tokenize and group


def _tokenize_batch(batch: dict[str, list], tokenizer, eos_id: int | None) -> dict[str, list]:
    ids = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False)["input_ids"]
    if eos_id is not None:
        ids = [seq + [eos_id] if text else seq for seq, text in zip(ids, batch["text"])]
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
    if args.block_size < 1:
        raise ValueError(f"--block_size must be a positive number of tokens, got {args.block_size}")
    eos_id = None
    if args.add_eos_token:
        eos_id = tokenizer.eos_token_id
        if eos_id is None:
            raise ValueError("the tokenizer has no eos token to separate documents; pass --add_eos_token false")
    streaming = isinstance(raw, datasets.IterableDatasetDict)

    def guard(desc: str) -> contextlib.AbstractContextManager:
        return main_process_first(desc=desc) if main_process_first else contextlib.nullcontext()

    def cached(desc: str) -> dict[str, Any]:  # IterableDataset.map has no cache, workers or progress bar
        if streaming:
            return {}
        return {"num_proc": args.preprocessing_num_workers, "load_from_cache_file": not args.overwrite_cache,
                "desc": desc}

    with guard("tokenizing"):
        tokenized = raw.map(
            _tokenize_batch,
            batched=True,
            remove_columns=["text"],
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

