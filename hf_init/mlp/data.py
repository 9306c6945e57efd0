"""Datasets of the MLP studies: UCI Wine, sklearn digits (the offline stand-in for MNIST), MNIST.

Every loader returns a :class:`TabularData`: float32 features standardised per feature with the
mean and population std (divide by N) of the *training split only*, int64 labels, and a fixed
train/test split.

- ``wine``: UCI Wine (178 samples, 13 features, 3 classes), bundled in scikit-learn. Stratified
  split, ``test_fraction`` of the samples, shuffled by ``split_seed``.
- ``digits``: 8x8 handwritten digits (1,797 samples, 64 features, 10 classes), bundled in
  scikit-learn. The offline stand-in for MNIST: always named as such, never as MNIST.
- ``mnist``: 28x28 digits (60,000 train / 10,000 test, the official split) from the Hub
  (``ylecun/mnist`` through ``datasets``) or from local files (``mnist_dir``: the four IDX
  files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally ``.gz``; or parquet files ``train*.parquet`` and
  ``test*.parquet`` with columns ``image`` and ``label`` as the Hub ships them).
  ``mnist_train_size`` keeps a random subset of the training split (drawn with
  ``split_seed``) to fit a CPU budget.

Features whose training std is 0 (digits and MNIST border pixels) are centred and left unscaled.
"""

from __future__ import annotations

import gzip
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("wine", "digits", "mnist")
MNIST_HUB_ID = "ylecun/mnist"
_IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class TabularData:
    """Standardised train/test tensors. ``x_*``: float32 (N, n_features); ``y_*``: int64 (N,)."""

    name: str
    description: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    def to(self, device) -> TabularData:
        """The same data with its tensors on ``device`` (itself when they are there already):
        one copy shared by every member of an ensemble."""
        device = torch.device(device)
        if self.x_train.device == device:
            return self
        move = lambda t: t.to(device)  # noqa: E731
        return TabularData(
            self.name,
            self.description,
            move(self.x_train),
            move(self.y_train),
            move(self.x_test),
            move(self.y_test),
            self.n_classes,
        )

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def chance_loss(self) -> float:
        """ln(n_classes): the cross-entropy of a uniform prediction."""
        return math.log(self.n_classes)


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale each feature by the training split's mean and population std (ddof=0);
    zero-std features are only centred. Returns float32 arrays."""
    x_train = x_train.astype(np.float64)
    x_test = x_test.astype(np.float64)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def _pack(name, description, xtr, ytr, xte, yte, n_classes) -> TabularData:
    xtr, xte = standardise(xtr, xte)
    return TabularData(
        name,
        description,
        torch.from_numpy(xtr),
        torch.from_numpy(np.array(ytr, dtype=np.int64)),
        torch.from_numpy(xte),
        torch.from_numpy(np.array(yte, dtype=np.int64)),
        int(n_classes),
    )


def _sklearn(name: str, split_seed: int, test_fraction: float) -> TabularData:
    from sklearn.datasets import load_digits, load_wine
    from sklearn.model_selection import train_test_split

    bunch = load_wine() if name == "wine" else load_digits()
    x, y = bunch.data, bunch.target
    xtr, xte, ytr, yte = train_test_split(
        x, y, test_size=test_fraction, random_state=split_seed, stratify=y
    )
    desc = (
        "UCI Wine (scikit-learn bundle)"
        if name == "wine"
        else "sklearn digits 8x8 (offline stand-in for MNIST, not MNIST)"
    )
    return _pack(
        name,
        f"{desc}: {len(ytr)} train / {len(yte)} test, split seed {split_seed}",
        xtr,
        ytr,
        xte,
        yte,
        len(np.unique(y)),
    )


# --- MNIST ------------------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): big-endian magic 0x00 0x00 <dtype> <ndim>, then
    ndim big-endian uint32 sizes, then the data. Only unsigned bytes (0x08) are supported."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(
            f"{path}: only unsigned-byte IDX data (type 0x08) is supported, got 0x{raw[2]:02x}"
        )
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - offset != count:
        raise ValueError(
            f"{path}: header says {dims} ({count} bytes) but the file holds {len(raw) - offset}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    dotted = folder / stem.replace("-idx", ".idx")  # some mirrors spell it train-images.idx3-ubyte
    for candidate in (dotted, dotted.with_name(dotted.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _images_to_array(images) -> np.ndarray:
    """Hub/parquet MNIST images (PIL images or {'bytes': png}) -> uint8 (N, 784)."""
    from PIL import Image

    out = []
    for im in images:
        if isinstance(im, dict):
            im = Image.open(io.BytesIO(im["bytes"]))
        out.append(np.asarray(im, dtype=np.uint8).reshape(-1))
    return np.stack(out)


def _mnist_local(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not folder.is_dir():
        raise FileNotFoundError(f"--mnist_dir {folder} is not a folder")
    found = {key: _find(folder, stem) for key, stem in _IDX_NAMES.items()}
    if all(found.values()):
        xtr = read_idx(found["train_images"])
        xte = read_idx(found["test_images"])
        xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
        ytr, yte = read_idx(found["train_labels"]), read_idx(found["test_labels"])
        if len(xtr) != len(ytr) or len(xte) != len(yte):
            raise ValueError(f"MNIST files in {folder}: images and labels have different counts")
        return xtr, ytr, xte, yte
    train_pq = sorted(folder.glob("train*.parquet"))
    test_pq = sorted(folder.glob("test*.parquet"))
    if train_pq and test_pq:
        import pandas as pd

        tr = pd.concat([pd.read_parquet(p) for p in train_pq])
        te = pd.concat([pd.read_parquet(p) for p in test_pq])
        return (
            _images_to_array(tr["image"]),
            tr["label"].to_numpy(),
            _images_to_array(te["image"]),
            te["label"].to_numpy(),
        )
    missing = [stem for key, stem in _IDX_NAMES.items() if not found[key]]
    raise FileNotFoundError(
        f"--mnist_dir {folder} holds neither the four MNIST IDX files (missing: "
        f"{', '.join(missing)}; optionally .gz) nor train*.parquet + test*.parquet"
    )


def _mnist_hub() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import logging

    import datasets  # imported first: it configures huggingface_hub's logger on import

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its per-retry warnings would bury the one-line error below
    try:
        ds = datasets.load_dataset(MNIST_HUB_ID)
    except Exception as err:  # offline, no cache, Hub down: all end the same way for the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"could not load MNIST from the Hub ({MNIST_HUB_ID}: {first[:120]}); use --dataset "
            "digits (offline stand-in) or --mnist_dir DIR with the MNIST IDX files or parquet "
            "files"
        ) from None
    finally:
        hub_log.setLevel(level)
    return mnist_arrays_from_hf(ds)


def mnist_arrays_from_hf(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A ``datasets.DatasetDict`` with MNIST's layout (splits ``train``/``test``, columns
    ``image`` (PIL) and ``label``) -> uint8 images (N, 784) and int64 labels, per split."""
    out = []
    for split in ("train", "test"):
        out.append(_images_to_array(ds[split]["image"]))
        out.append(np.fromiter(ds[split]["label"], dtype=np.int64))
    return tuple(out)


def _mnist(split_seed: int, mnist_dir: str | Path | None, train_size: int | None) -> TabularData:
    source = f"local files {mnist_dir}" if mnist_dir else f"the Hub ({MNIST_HUB_ID})"
    xtr, ytr, xte, yte = _mnist_local(Path(mnist_dir)) if mnist_dir else _mnist_hub()
    if train_size is not None and train_size < len(ytr):
        keep = np.sort(
            np.random.default_rng(split_seed).choice(len(ytr), size=train_size, replace=False)
        )
        xtr, ytr = xtr[keep], ytr[keep]
    n_classes = int(max(ytr.max(), yte.max())) + 1
    return _pack(
        "mnist",
        f"MNIST from {source}: {len(ytr)} train / {len(yte)} test (official split)",
        xtr,
        ytr,
        xte,
        yte,
        n_classes,
    )


def load_tabular(
    name: str,
    split_seed: int = 0,
    test_fraction: float = 0.25,
    mnist_dir: str | Path | None = None,
    mnist_train_size: int | None = None,
) -> TabularData:
    """Load dataset ``name`` (one of :data:`DATASETS`), standardised with training statistics."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if mnist_train_size is not None and mnist_train_size < 1:
        raise ValueError(f"mnist_train_size must be >= 1, got {mnist_train_size}")
    if name == "mnist":
        return _mnist(split_seed, mnist_dir, mnist_train_size)
    return _sklearn(name, split_seed, test_fraction)
