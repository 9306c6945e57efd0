"""What every study's figures share: matplotlib on the headless Agg backend (:func:`pyplot`) and
the atomic PNG writer (:func:`save_figure`); each study draws its own figures in its ``plots``."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (imported lazily: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` atomically (temp file + rename) and close it. A figure with a
    layout engine (constrained layout) is saved as laid out: trimming it to a tight bounding box
    as well would measure every artist again in a second draw (about a third of a run's figure
    time); one without is trimmed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    tight = None if fig.get_layout_engine() is not None else "tight"
    fig.savefig(tmp, dpi=dpi, bbox_inches=tight)
    tmp.replace(path)
    pyplot().close(fig)
    return path
