"""Output folders, one way for every script: refuse a folder that already holds outputs unless
the user passes the overwrite flag, and with it keep the earlier outputs until the new run
succeeds (moved aside, put back exactly as they were if the run fails; a failed training run's
own outputs are kept too, see :func:`kept_until_success`); write files atomically; record the
package versions that produced them."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
from collections.abc import Iterable
from pathlib import Path

from hf_init.core.cli import UsageError


def existing_outputs(path: str | os.PathLike, markers: Iterable[str] | None = None) -> list[str]:
    """Names in ``path`` that show it already holds outputs: the ``markers`` present (a marker with
    ``*`` is a glob pattern, its matches sorted), or with ``markers=None`` every entry (sorted).
    Empty if there is no folder; :class:`UsageError` if ``path`` exists and is not a folder."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {str(out)!r} exists and is not a folder")
    if not out.is_dir():
        return []
    if markers is None:
        return sorted(p.name for p in out.iterdir())
    found: list[str] = []
    for m in markers:
        found += (
            sorted(p.name for p in out.glob(m)) if "*" in m else ([m] if (out / m).exists() else [])
        )
    return found


def check_output_dir(
    path: str | os.PathLike,
    overwrite: bool,
    markers: Iterable[str] | None = None,
    flag: str = "--overwrite",
) -> list[str]:
    """Refuse (:class:`UsageError`, one line naming the folder, what it holds and ``flag``) an
    output folder that already holds outputs (see :func:`existing_outputs`), unless ``overwrite``.
    Returns what it holds (for :func:`kept_until_success`). Also refuses, in one line, a folder that
    cannot be written (see :func:`check_writable`), so the run fails before any data is read.
    Leaves nothing behind."""
    found = existing_outputs(path, markers)
    check_writable(path)
    if found and not overwrite:
        raise UsageError(
            f"output folder {str(path)!r} already holds {', '.join(found[:4])}"
            f"{', ...' if len(found) > 4 else ''}; pass {flag} to replace it or choose another "
            f"--output_dir"
        )
    return found


def check_writable(path: str | os.PathLike) -> None:
    """:class:`UsageError` (one line) unless the output folder ``path`` can be created and written:
    a file in the way of it or of a parent folder, a read-only or full file system, no permission.
    Probes with a temporary folder made (and removed at once) in ``path`` or, when ``path`` does not
    exist yet, in its nearest existing parent; creates nothing that stays."""
    import tempfile

    out = Path(path)
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(
            f"cannot create output folder {str(out)!r}: {str(parent)!r} is a file, not a folder; "
            f"choose another --output_dir"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hf_init-write-probe-", dir=parent))
    except OSError as err:
        raise UsageError(
            f"cannot write output folder {str(out)!r}: {err.strerror or err} in {str(parent)!r}; "
            f"choose another --output_dir"
        ) from None


def move_aside(path: str | os.PathLike, found: list[str]) -> Path:
    """Move the earlier outputs ``found`` (from :func:`check_output_dir`) into a new hidden sibling
    folder ``.<name>.previous-XXXX`` and return it, so the new run starts clean (TensorBoard and the
    figures never mix two runs) but nothing is lost until it succeeds: see
    :func:`kept_until_success`."""
    import tempfile

    out = Path(path).resolve()
    backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent))
    try:
        for name in found:
            os.replace(out / name, backup / name)  # same parent folder: a rename, never a copy
    except BaseException:
        restore(out, backup, keep=None)  # put back what was moved; delete nothing
        raise
    return backup


def restore(path: str | os.PathLike, backup: Path, keep: set[str] | None) -> None:
    """Undo a failed run: delete every entry of ``path`` not named in ``keep`` (what was there
    before the run, besides the moved-aside outputs; ``None``: delete nothing), then move the
    backup's entries back and remove the (then empty) backup folder."""
    out = Path(path)
    for p in list(out.iterdir()) if keep is not None else []:
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for p in backup.iterdir():
        os.replace(p, out / p.name)
    backup.rmdir()


@contextlib.contextmanager
def kept_until_success(
    path: str | os.PathLike, found: list[str], active: bool = True, keep_failed: bool = False
):
    """With the overwrite flag: move the earlier outputs (``found``) aside, run the body, then
    delete them on success or, on any exception (KeyboardInterrupt included), put them back exactly
    as they were. Entries of the folder not in ``found`` are left alone. ``active=False`` (e.g.
    non-main ranks): do nothing.

    ``keep_failed=True`` (a training run: its checkpoints may be hours of work): a failed run that
    wrote something is never deleted. It stays in ``path`` (where ``--resume_from_checkpoint``
    continues it) and the earlier outputs go to the visible sibling ``<name>.previous-XXXX``; the
    error says which is which (appended to a :class:`~hf_init.core.cli.RunStopped` message, else a
    line on stderr). A failed run that wrote nothing puts the earlier outputs back as above."""
    out = Path(path)
    backup = move_aside(out, found) if found and active else None
    keep = {p.name for p in out.iterdir()} if backup is not None else set()
    try:
        yield
    except BaseException as exc:
        if backup is not None:
            written = sorted(p.name for p in out.iterdir() if p.name not in keep)
            if keep_failed and written:
                earlier = keep_beside(out, backup)
                more = ", ..." if len(written) > 3 else ""
                note = (
                    f"the failed run's outputs ({', '.join(written[:3])}{more}) "
                    f"stay in {str(out)!r}; the earlier run it was replacing is in {str(earlier)!r}"
                )
                from hf_init.core.cli import RunStopped

                if isinstance(exc, RunStopped):
                    exc.args = (f"{exc.args[0]}; {note}",)
                else:
                    import sys

                    print(f"note: {note}", file=sys.stderr)
                raise
            try:
                restore(out, backup, keep)
            except Exception as err:
                raise RuntimeError(
                    f"the run failed and restoring the earlier outputs failed too ({err}); "
                    f"they are in {backup}"
                ) from err
        raise
    if backup is not None:
        shutil.rmtree(backup)


def keep_beside(path: str | os.PathLike, backup: Path) -> Path:
    """Rename the hidden backup of :func:`move_aside` to a visible ``<name>.previous-N`` sibling
    (first free N) and return it."""
    out = Path(path).resolve()
    n = 1
    while (out.parent / f"{out.name}.previous-{n}").exists():
        n += 1
    target = out.parent / f"{out.name}.previous-{n}"
    os.replace(backup, target)
    return target


def _strict_json(x):
    """NaN/inf -> null (strict JSON: every reader takes it); numpy scalars -> Python numbers."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict_json(v) for v in x]
    if hasattr(x, "item") and getattr(x, "shape", None) == ():  # numpy / torch scalar
        return _strict_json(x.item())
    return x


def write_atomic(path: str | os.PathLike, write) -> Path:
    """The one atomic writer: ``write(f)`` fills a hidden temp file beside ``path`` (text mode,
    UTF-8), which then replaces ``path`` in one rename: a reader or a crash never sees half a
    file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        write(f)
    tmp.replace(path)
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    """JSON, atomically; NaN/inf become null (strict JSON), other objects their ``str``."""
    return write_atomic(
        path, lambda f: f.write(json.dumps(_strict_json(obj), indent=2, default=str) + "\n")
    )


def write_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Dict rows as CSV, atomically; columns from the first row."""
    import csv

    def write(f):
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        w.writeheader()
        w.writerows(rows)

    return write_atomic(path, write)


def package_versions() -> dict:
    """Python, the libraries a study's numbers depend on and the platform, recorded with its outputs
    (a pretraining run's ``run_info.json``, an MLP study's ``summary.json``). Read from the
    installed distributions' metadata, so a study that does not use a library (the MLP studies
    and ``datasets``) does not pay for importing it."""
    from importlib.metadata import version

    names = ("torch", "transformers", "accelerate", "datasets", "evaluate", "tokenizers")
    return {
        "python": platform.python_version(),
        **{name: version(name) for name in names},
        "platform": platform.platform(),
    }
