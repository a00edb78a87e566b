"""Tests for gmsearch.datasets: every loader through its real code path, offline.

torchvision datasets are exercised on small files these tests write in the real
on-disk formats (IDX files under ``root/<Class>/raw/`` for the MNIST family,
pickled batches under ``root/cifar-10-batches-py/`` for CIFAR-10), parsed by
torchvision's own classes. MNIST-family raw files carry no checksum check in
torchvision; CIFAR-10 files are checked against the official md5 sums, which
hand-made files cannot match, so the CIFAR tests replace only
``torchvision.datasets.cifar.check_integrity`` with an existence check (parsing
stays torchvision's) and a separate test shows the unpatched check is reported
as a clear error.
"""

from __future__ import annotations

import logging
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gmsearch import data as datasets
from gmsearch.data import Dataset, DatasetNotFoundError, RawData, Split
from gmsearch.registry import UnknownPluginError

SHARED_DATA = Path("/work/shared/data")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


# --------------------------------------------------------------------------- writers of real formats


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX (SN3 'Pascal Vincent') file, as in the MNIST distribution."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist_like(root: Path, folder: str, rng: np.random.Generator,
                     n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx(raw / name, array)
    return arrays


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, rng: np.random.Generator, per_batch: int = 10,
                  n_test: int = 20) -> dict[str, np.ndarray]:
    """Write CIFAR-10's python pickles: rows of 3072 bytes (1024 R, 1024 G, 1024 B)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images = {"train": [], "test": []}  # type: dict[str, list[np.ndarray]]
    labels = {"train": [], "test": []}  # type: dict[str, list[int]]

    def batch(file: str, n: int, split: str) -> None:
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        entry = {"batch_label": file, "labels": y, "data": x.reshape(n, 3072),
                 "filenames": [f"{file}_{i}.png" for i in range(n)]}
        with open(folder / file, "wb") as f:
            pickle.dump(entry, f)
        images[split].append(x)
        labels[split].extend(y)

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_batch, "train")
    batch("test_batch", n_test, "test")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return {"x_train": np.concatenate(images["train"]), "y_train": np.array(labels["train"]),
            "x_test": np.concatenate(images["test"]), "y_test": np.array(labels["test"])}


@pytest.fixture
def no_cifar_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let torchvision accept hand-made CIFAR files: existence check instead of official md5s."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every torchvision download fail at once, as without internet."""
    import torchvision.datasets as tvd

    def fail(self: object) -> None:
        raise RuntimeError("Error downloading: network is unreachable")

    for cls in (tvd.MNIST, tvd.CIFAR10):
        monkeypatch.setattr(cls, "download", fail)


def labelled_images(n_per_class: list[int], size: int = 4, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Grey uint8 images whose first two pixels encode a unique id (to track identity through splits)."""
    y = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(n_per_class)])
    ids = np.arange(len(y)) + offset
    x = np.zeros((len(y), size, size), dtype=np.uint8)
    x[:, 0, 0], x[:, 0, 1] = ids // 256, ids % 256
    return x, y


def ids_of(split: Split) -> np.ndarray:
    x = (split.x[:, 0, 0, :2] * 255).round().long().numpy()
    return x[:, 0] * 256 + x[:, 1]


# --------------------------------------------------------------------------- torchvision loaders


@pytest.mark.parametrize(("name", "folder", "classes"), [
    ("mnist", "MNIST", "0 - zero"),
    ("fashion_mnist", "FashionMNIST", "T-shirt/top"),
    ("kmnist", "KMNIST", "o"),
])
def test_mnist_family_reads_idx_files(tmp_path: Path, name: str, folder: str, classes: str) -> None:
    arrays = write_mnist_like(tmp_path, folder, np.random.default_rng(0))
    data = datasets.load(name, root=tmp_path, download=False, val_fraction=0.25, seed=0)
    assert data.input_shape == (1, 28, 28)
    assert data.num_classes == 10 and data.class_names[0] == classes
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 20)
    # test split: the source's own, in order, pixels / 255 exactly
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().div(255).unsqueeze(1)
    assert torch.equal(data.test.x, expected)
    assert data.test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert data.test.y.dtype == torch.int64 and data.train.x.dtype == torch.float32
    # train + val are exactly the training images, each once
    train_all = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float().div(255)
    got = torch.cat([data.train.x, data.val.x])[:, 0]
    assert sorted(map(tuple, got.flatten(1).tolist())) == sorted(map(tuple, train_all.flatten(1).tolist()))


def test_cifar10_reads_python_batches(tmp_path: Path, no_cifar_md5: None) -> None:
    arrays = write_cifar10(tmp_path, np.random.default_rng(1))
    data = datasets.load("cifar10", root=tmp_path, download=False, val_fraction=0.0)
    assert data.input_shape == (3, 32, 32)
    assert data.class_names == tuple(CIFAR_NAMES)
    assert len(data.train) == 50 and len(data.val) == 0 and len(data.test) == 20
    # channel order: the rows are R plane, G plane, B plane; we return N x C x H x W
    assert torch.equal(data.test.x, torch.from_numpy(arrays["x_test"]).float() / 255)
    assert data.test.y.tolist() == arrays["y_test"].tolist()
    order = {bytes(img.tobytes()): i for i, img in enumerate(arrays["x_train"])}
    for img, label in zip(data.train.x, data.train.y, strict=True):
        i = order[(img * 255).round().to(torch.uint8).numpy().tobytes()]
        assert int(label) == int(arrays["y_train"][i])


def test_cifar10_checksum_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path, np.random.default_rng(2))
    with pytest.raises(DatasetNotFoundError, match=r"torchvision said.*corrupted"):
        datasets.load("cifar10", root=tmp_path, download=False)


def test_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        datasets.load("mnist", root=tmp_path, download=False)
    message = str(info.value)
    assert "'mnist'" in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(f in message for f in IDX_FILES)
    assert "download=True" in message and "root=" in message
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize(("name", "folder", "expected"), [
    ("kmnist", "KMNIST/raw", "t10k-labels-idx1-ubyte"),
    ("cifar10", "cifar-10-batches-py", "data_batch_5"),
])
def test_failed_download_is_a_clear_error(tmp_path: Path, no_network: None, name: str, folder: str,
                                          expected: str) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        datasets.load(name, root=tmp_path, download=True)
    message = str(info.value)
    assert repr(name) in message and str(tmp_path / folder) in message and expected in message
    assert "network is unreachable" in message
    assert isinstance(info.value.__cause__, RuntimeError)


def test_partial_files_name_the_missing_ones(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, "MNIST", np.random.default_rng(0))
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"missing: t10k-images-idx3-ubyte\)"):
        datasets.load("mnist", root=tmp_path, download=False)


def test_default_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMSEARCH_DATA", str(tmp_path))
    assert datasets.default_root() == tmp_path
    write_mnist_like(tmp_path, "KMNIST", np.random.default_rng(3))
    assert len(datasets.load("kmnist", download=False).test) == 20
    monkeypatch.delenv("GMSEARCH_DATA")
    assert datasets.default_root() == Path.home() / ".cache" / "gmsearch" / "data"


# --------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_sizes() -> None:
    data = datasets.load("digits", seed=0)
    assert data.input_shape == (1, 16, 16) and data.num_classes == 10
    assert data.class_names == tuple(str(i) for i in range(10))
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert 355 <= len(data.test) <= 365  # 20 % per class, rounded
    assert abs(len(data.val) - 0.1 * (len(data.train) + len(data.val))) <= 5
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
    assert float(data.train.x.max()) == 1.0  # full grey range used


def test_digits_native_size_is_the_sklearn_images() -> None:
    from sklearn.datasets import load_digits

    data = datasets.load("digits", image_size=8, val_fraction=0.0)
    images = torch.as_tensor(load_digits().images, dtype=torch.float32) / 16
    pool = {tuple(img.flatten().tolist()) for img in images}
    assert data.input_shape == (1, 8, 8)
    assert all(tuple(img.flatten().tolist()) in pool for img in data.test.x[:50])


def test_digits_determinism_and_seeds() -> None:
    a, b = datasets.load("digits", seed=0), datasets.load("digits", seed=0)
    c = datasets.load("digits", seed=1)
    for sa, sb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert not torch.equal(a.val.x, c.val.x)
    # the test split is fixed, like an official one, whatever the seed
    assert torch.equal(a.test.x, c.test.x)
    assert len(a.fingerprint()) == 24 and a.fingerprint() is a.fingerprint()


def test_digits_splits_are_stratified() -> None:
    data = datasets.load("digits", seed=3)
    train = torch.bincount(data.train.y, minlength=10)
    val = torch.bincount(data.val.y, minlength=10)
    test = torch.bincount(data.test.y, minlength=10)
    total = train + val + test
    assert ((test.float() - 0.2 * total.float()).abs() <= 1).all()
    assert ((val.float() - 0.1 * (train + val).float()).abs() <= 1).all()


# --------------------------------------------------------------------------- protocol: reduction and val


@pytest.fixture
def three_class_npz(tmp_path: Path) -> Path:
    x_train, y_train = labelled_images([1200, 1200, 1200])
    x_test, y_test = labelled_images([120, 120, 120], offset=10_000)
    path = tmp_path / "three.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array(["a", "b", "c"]))
    return path


def test_reduced_protocol_is_class_balanced(three_class_npz: Path) -> None:
    data = datasets.load("npz", path=three_class_npz, reduced=True, val_fraction=0.1, seed=0)
    assert data.class_names == ("a", "b", "c")
    assert (len(data.train), len(data.val), len(data.test)) == (2700, 300, 300)
    assert torch.bincount(data.train.y).tolist() == [900] * 3
    assert torch.bincount(data.val.y).tolist() == [100] * 3
    assert torch.bincount(data.test.y).tolist() == [100] * 3
    train_ids, val_ids = set(ids_of(data.train)), set(ids_of(data.val))
    assert len(train_ids) == 2700 and len(val_ids) == 300 and not train_ids & val_ids
    # labels still belong to their images: ids were assigned class by class
    assert all((ids_of(data.train) // 1200) == data.train.y.numpy())
    assert all((ids_of(data.test) - 10_000) // 120 == data.test.y.numpy())


def test_reduced_protocol_is_seeded(three_class_npz: Path) -> None:
    a = datasets.load("npz", path=three_class_npz, reduced=True, seed=5)
    b = datasets.load("npz", path=three_class_npz, reduced=True, seed=5)
    c = datasets.load("npz", path=three_class_npz, reduced=True, seed=6)
    assert np.array_equal(ids_of(a.train), ids_of(b.train)) and np.array_equal(ids_of(a.val), ids_of(b.val))
    assert np.array_equal(ids_of(a.test), ids_of(b.test))
    assert set(ids_of(a.train)) | set(ids_of(a.val)) != set(ids_of(c.train)) | set(ids_of(c.val))
    assert set(ids_of(a.test)) != set(ids_of(c.test))


def test_reduced_keeps_all_of_a_short_class(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x_train, y_train = labelled_images([1100, 400])
    x_test, y_test = labelled_images([150, 60])
    np.savez(tmp_path / "short.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    with caplog.at_level(logging.WARNING, logger="gmsearch.datasets"):
        data = datasets.load("npz", path=tmp_path / "short.npz", reduced=True, val_fraction=0.0)
    assert torch.bincount(data.train.y).tolist() == [1000, 400]
    assert torch.bincount(data.test.y).tolist() == [100, 60]
    assert "1: 400" in caplog.text and "1: 60" in caplog.text


def test_val_fraction_zero_and_validation(three_class_npz: Path) -> None:
    data = datasets.load("npz", path=three_class_npz, val_fraction=0.0)
    assert len(data.val) == 0 and data.val.x.shape[1:] == data.train.x.shape[1:]
    assert len(data.train) == 3600 and len(data.test) == 360  # no reduction
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            datasets.load("npz", path=three_class_npz, val_fraction=bad)


# --------------------------------------------------------------------------- npz


def test_npz_channels_last_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x_train = rng.integers(0, 256, (30, 8, 6, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (9, 8, 6, 3), dtype=np.uint8)
    y_train, y_test = np.arange(30) % 3, np.arange(9) % 3
    np.savez(tmp_path / "rgb.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    data = datasets.load("npz", path=tmp_path / "rgb.npz", val_fraction=0.0)
    assert data.input_shape == (3, 8, 6)
    assert data.num_classes == 3 and data.class_names == ("0", "1", "2")
    assert torch.equal(data.test.x, torch.from_numpy(x_test).permute(0, 3, 1, 2).float() / 255)
    assert data.test.x.is_contiguous()


def test_npz_grey_and_relative_path_under_root(tmp_path: Path) -> None:
    x_train, y_train = labelled_images([10, 10])
    x_test, y_test = labelled_images([4, 4])
    np.savez(tmp_path / "grey.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    data = datasets.load("npz", root=tmp_path, path="grey.npz", val_fraction=0.2)
    assert data.input_shape == (1, 4, 4)
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 8)
    assert torch.equal(data.test.x[:, 0], torch.from_numpy(x_test).float() / 255)


def test_npz_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"nope\.npz.*x_train, y_train, x_test, y_test"):
        datasets.load("npz", path=tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="path="):
        datasets.load("npz")
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="lacks arrays x_test, y_test"):
        datasets.load("npz", path=tmp_path / "partial.npz")
    np.savez(tmp_path / "float.npz", x_train=np.full((2, 4, 4), 3.0), y_train=np.zeros(2, np.int64),
             x_test=np.zeros((2, 4, 4)), y_test=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        datasets.load("npz", path=tmp_path / "float.npz")


@pytest.mark.skipif(not (SHARED_DATA / "cifar10_reduced.npz").is_file(), reason="shared data not present")
def test_real_cifar10_reduced_npz() -> None:
    data = datasets.load("npz", path=SHARED_DATA / "cifar10_reduced.npz", reduced=True, seed=0)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert (len(data.train), len(data.val), len(data.test)) == (9000, 1000, 1000)
    assert torch.bincount(data.test.y).tolist() == [100] * 10
    # shuffled: the file is ordered by class, the training split must not be
    assert len(set(data.train.y[:50].tolist())) > 5


@pytest.mark.skipif(not (SHARED_DATA / "mnist.npz").is_file(), reason="shared data not present")
def test_real_mnist_npz_reduced() -> None:
    data = datasets.load("npz", path=SHARED_DATA / "mnist.npz", reduced=True, seed=0)
    assert data.input_shape == (1, 28, 28)
    assert torch.bincount(data.train.y + 0).tolist() == [900] * 10
    assert torch.bincount(data.test.y).tolist() == [100] * 10


# --------------------------------------------------------------------------- containers, registry, device


def test_unknown_name_lists_available() -> None:
    with pytest.raises(UnknownPluginError, match=r"available: .*cifar10.*digits.*mnist"):
        datasets.load("imagenet")


def test_builtin_registry() -> None:
    assert {"digits", "mnist", "fashion_mnist", "kmnist", "cifar10", "npz"} <= set(datasets.names())
    assert all(e.description for e in datasets.registry.entries())


def test_custom_loader_registers_and_loads() -> None:
    @datasets.register("tiny_test_set")
    def tiny(root: Path, download: bool, n: int = 20) -> RawData:
        """Two-class test data."""
        x = torch.rand(n, 2, 5, 5)
        y = torch.arange(n) % 2
        return RawData(x_train=x, y_train=y, x_test=x[:4], y_test=y[:4], class_names=("off", "on"))

    try:
        data = datasets.load("tiny_test_set", n=30, val_fraction=0.2)
        assert data.input_shape == (2, 5, 5) and data.class_names == ("off", "on")
        assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 4)
        assert datasets.get("tiny_test_set") is tiny
    finally:
        datasets.registry.unregister("tiny_test_set")


def test_loader_must_return_rawdata() -> None:
    @datasets.register("bad_test_set")
    def bad(root: Path, download: bool) -> RawData:
        """Returns the wrong thing."""
        return (1, 2)  # type: ignore[return-value]

    try:
        with pytest.raises(TypeError, match="RawData"):
            datasets.load("bad_test_set")
    finally:
        datasets.registry.unregister("bad_test_set")


def test_device_placement_and_fingerprint_kept() -> None:
    data = datasets.load("digits", device="cpu")
    assert data.device == torch.device("cpu")
    fp = data.fingerprint()
    moved = data.to("meta")
    assert moved.train.x.device.type == "meta" and moved.test.y.device.type == "meta"
    assert moved.fingerprint() == fp and moved.input_shape == data.input_shape
    assert isinstance(moved, Dataset) and len(moved.val) == len(data.val)


def test_split_validates() -> None:
    with pytest.raises(ValueError, match="float32"):
        Split(torch.zeros(2, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(3, dtype=torch.int64))
    split = Split(torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.int64))
    assert len(split) == 3
