"""Datasets: standardisation from the training split only; MNIST through the real IDX loader."""

import gzip
import struct

import numpy as np
import pytest

from hf_init.mlp.data import load_tabular, read_idx


@pytest.mark.parametrize("name,n_features,n_classes", [("wine", 13, 3), ("digits", 64, 10)])
def test_sklearn_datasets_standardised_with_train_stats(name, n_features, n_classes):
    from sklearn.datasets import load_digits, load_wine
    from sklearn.model_selection import train_test_split

    d = load_tabular(name, split_seed=3)
    assert d.n_features == n_features and d.n_classes == n_classes
    bunch = load_wine() if name == "wine" else load_digits()
    xtr, xte, ytr, yte = train_test_split(
        bunch.data, bunch.target, test_size=0.25, random_state=3, stratify=bunch.target
    )
    mu, sd = xtr.mean(0), xtr.std(0)
    sd[sd == 0] = 1.0
    np.testing.assert_allclose(d.x_train.numpy(), (xtr - mu) / sd, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.x_test.numpy(), (xte - mu) / sd, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(d.y_test.numpy(), yte)
    assert d.chance_loss == pytest.approx(np.log(n_classes))
    assert not np.allclose(
        load_tabular(name, split_seed=4).x_test.numpy(), d.x_test.numpy()
    )  # split follows the seed


def _write_idx(path, arr, gz):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(
        struct.pack(">I", s) for s in arr.shape
    )
    raw = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_local_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (30, 28, 28))
    ytr = np.arange(30) % 10
    xte = rng.integers(0, 256, (8, 28, 28))
    yte = np.arange(8) % 10
    for name, arr in (
        ("train-images-idx3-ubyte", xtr),
        ("train-labels-idx1-ubyte", ytr),
        ("t10k-images-idx3-ubyte", xte),
        ("t10k-labels-idx1-ubyte", yte),
    ):
        _write_idx(tmp_path / name, arr, gz)
    np.testing.assert_array_equal(read_idx(next(tmp_path.glob("t10k-images*"))), xte)
    d = load_tabular("mnist", mnist_dir=tmp_path)
    assert d.n_features == 784 and d.n_classes == 10
    flat = xtr.reshape(30, -1).astype(np.float64)
    mu, sd = flat.mean(0), flat.std(0)
    np.testing.assert_allclose(d.x_train.numpy(), (flat - mu) / sd, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(d.y_train.numpy(), ytr)
    np.testing.assert_array_equal(d.y_test.numpy(), yte)
    sub = load_tabular("mnist", mnist_dir=tmp_path, mnist_train_size=12)
    assert len(sub.y_train) == 12 and len(sub.y_test) == 8


def test_mnist_missing_files_and_offline_hub_name_the_alternatives(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28)), False)
        load_tabular("mnist", mnist_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="--dataset digits.*--mnist_dir"):
        load_tabular("mnist")  # tests run offline (conftest): the Hub is unreachable


def test_bad_idx_and_unknown_dataset(tmp_path):
    (tmp_path / "x").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "x")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*wine, digits, mnist"):
        load_tabular("cifar")


def test_mnist_from_local_parquet(tmp_path):
    """The Hub's parquet layout: columns image ({'bytes': PNG}) and label."""
    import io

    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (6, 28, 28)).astype(np.uint8)

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    for split, sl in (("train", slice(0, 4)), ("test", slice(4, 6))):
        pd.DataFrame({"image": [png(a) for a in imgs[sl]], "label": np.arange(6)[sl]}).to_parquet(
            tmp_path / f"{split}-00000-of-00001.parquet"
        )
    d = load_tabular("mnist", mnist_dir=tmp_path)
    flat = imgs[:4].reshape(4, -1).astype(np.float64)
    sd = flat.std(0)
    sd[sd == 0] = 1
    np.testing.assert_allclose(d.x_train.numpy(), (flat - flat.mean(0)) / sd, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(d.y_test.numpy(), [4, 5])
    # half of the layout: the train split alone is not a data set, one clear error
    (tmp_path / "test-00000-of-00001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"nor train\*\.parquet \+ test\*\.parquet"):
        load_tabular("mnist", mnist_dir=tmp_path)


def test_mnist_hub_layout_through_datasets():
    """The Hub path's conversion, fed a DatasetDict built locally with ylecun/mnist's features."""
    import datasets
    from PIL import Image

    from hf_init.mlp.data import mnist_arrays_from_hf

    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    feats = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
    )
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"image": [Image.fromarray(a) for a in imgs[:3]], "label": [3, 1, 4]},
                features=feats,
            ),
            "test": datasets.Dataset.from_dict(
                {"image": [Image.fromarray(a) for a in imgs[3:]], "label": [1, 5]}, features=feats
            ),
        }
    )
    xtr, ytr, xte, yte = mnist_arrays_from_hf(dd)
    np.testing.assert_array_equal(xtr, imgs[:3].reshape(3, -1))
    np.testing.assert_array_equal(xte, imgs[3:].reshape(2, -1))
    assert ytr.tolist() == [3, 1, 4] and yte.tolist() == [1, 5]


@pytest.mark.parametrize("short", ["train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"])
def test_mnist_images_and_labels_of_different_counts_are_refused(tmp_path, short):
    """One label file shorter than its images (train or test): one error naming the folder."""
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(6) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(4) % 10,
    }
    files[short] = files[short][:-1]
    for name, arr in files.items():
        _write_idx(tmp_path / name, arr, False)
    with pytest.raises(ValueError, match="images and labels have different counts"):
        load_tabular("mnist", mnist_dir=tmp_path)
