"""The built-in offline corpus: English text that Python itself ships, the ``pydoc_data.topics``
help pages and the docstrings of the standard library (read from source with ``ast``, nothing is
imported); about 2.2 million characters, the same wherever the same Python build is installed
(distributions patch the standard library: the corpus info's sha256 tells).

It is extracted once and cached under the Hugging Face datasets cache (``$HF_DATASETS_CACHE``, by
default ``~/.cache/huggingface/datasets``) or ``--data_cache_dir``, in
``<cache>/hf_init/builtin_corpus/<key>/``. Also here: :func:`corpus_stats`, the counts and hash
every corpus info reports.
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
from collections.abc import Iterable
from pathlib import Path

import datasets

from hf_init.lm.data.args import TEXT_COLUMN

BUILTIN_CORPUS_NAME = "python-docs"
# Bump when the way the built-in corpus is extracted changes (invalidates its disk cache).
_BUILTIN_FORMAT = 1
_SKIP_DIRS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "turtledemo",
}


def _stdlib_sources() -> list[Path]:
    """Standard-library ``.py`` files in a fixed (sorted) order, without tests and third-party
    code."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs if d not in _SKIP_DIRS and not d.startswith(("test", "config-"))
        )
        found.extend(
            Path(folder) / f
            for f in sorted(files)
            if f.endswith(".py") and not f.startswith("test")
        )
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


def builtin_dataset(cache_dir: str | None = None) -> datasets.Dataset:
    """The built-in corpus as a disk-backed Dataset (column ``TEXT_COLUMN``), extracted once and
    cached: ``datasets.map`` caches results only for datasets that live in files."""
    folder = _cache_root(cache_dir) / "hf_init" / "builtin_corpus" / _builtin_cache_key()
    if not (folder / "dataset_info.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        try:
            docs = _build_builtin_corpus()
            # from_dict fingerprints the content, so downstream map caches are reused across runs.
            datasets.Dataset.from_dict({TEXT_COLUMN: docs}).save_to_disk(str(tmp))
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
    return list(builtin_dataset(cache_dir)[TEXT_COLUMN])


def corpus_stats(documents: Iterable[str]) -> tuple[int, int, str]:
    """(number of documents, number of characters (code points), SHA-256) in one pass. The hash is
    of the documents in order, each UTF-8 encoded, separated by one NUL byte:
    ``sha256(b"\\0".join(d.encode("utf-8") for d in documents))``."""
    h = hashlib.sha256()
    n_docs = n_chars = 0
    for doc in documents:
        if n_docs:
            h.update(b"\0")
        h.update(doc.encode("utf-8"))
        n_docs += 1
        n_chars += len(doc)
    return n_docs, n_chars, h.hexdigest()
