"""Local `evaluate` metric modules, loadable offline by path (``evaluate.load`` of a folder
that holds ``<folder name>.py``): the Hub copies of common metrics cannot be fetched offline.

    >>> metric = evaluate.load(metric_path("next_token_accuracy"))
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent


def metric_path(name: str) -> str:
    """Folder of the local metric module ``name`` (the folder name is the module file's stem)."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"no local metric {name!r}; available: {', '.join(available)}")
    return str(path)
