"""Image-classification datasets as whole tensors, with the paper's splits.

Every dataset is loaded into memory as float32 ``N x C x H x W`` tensors with
values in ``[0, 1]`` (normalisation lives inside models) and int64 labels, so
that training can keep the whole set on the device and batch by index slices.

A *loader* (a registered plugin) only reads the raw train and test images of one
source; :func:`load` then applies the same protocol to every source:

1. optional reduction (``reduced=True``): the paper's reduced-dataset protocol
   (section 4.2), 1,000 training and 100 test images per class, class-balanced
   and seeded;
2. a stratified, seeded validation split (``val_fraction`` of the training
   images, carved *after* reduction); the search scores children on it and
   reports on the held-out test split;
3. device placement.

Built-in loaders: ``digits`` (scikit-learn's 1,797 real handwritten digits,
bundled, no download), ``mnist``, ``fashion_mnist``, ``kmnist`` and
``cifar10`` (torchvision; downloaded on first use) and ``npz`` (your own
arrays in a ``.npz`` file).

Example:
    >>> import gmsearch as gms
    >>> data = gms.datasets.load("digits", seed=0)
    >>> data.input_shape, data.num_classes
    ((1, 16, 16), 10)

Custom datasets register a loader returning :class:`RawData`::

    @gms.datasets.register("my_set")
    def my_set(root: Path, download: bool, **kwargs: Any) -> gms.datasets.RawData:
        '''One line shown by `gmsearch plugins`.'''
        return gms.datasets.RawData(x_train=..., y_train=..., x_test=..., y_test=...,
                                    class_names=("cat", "dog"))

``root`` is the data directory chosen by :func:`load`, ``download`` whether the
user allows downloading, and ``kwargs`` the extra keyword arguments given to
:func:`load`. Images may be uint8 (``0..255``) or floating point in ``[0, 1]``,
shaped ``N x H x W`` (grey), ``N x H x W x C`` (channels-last, C <= 4) or
``N x C x H x W``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gmsearch.data._containers import Dataset, Split
from gmsearch.data._subsets import per_class_subset, stratified_split
from gmsearch.registry import Registry

logger = logging.getLogger(__name__)

#: Training images per class in the paper's reduced protocol (section 4.2).
REDUCED_TRAIN_PER_CLASS = 1000
#: Test images per class in the paper's reduced protocol (section 4.2).
REDUCED_TEST_PER_CLASS = 100


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are missing and could not (or may not) be downloaded."""


@dataclass(frozen=True)
class RawData:
    """What a loader returns: the source's own train and test images.

    Attributes:
        x_train: Training images, uint8 (``0..255``) or float in ``[0, 1]``;
            ``N x H x W``, ``N x H x W x C`` (C <= 4) or ``N x C x H x W``.
            Tensors or numpy arrays.
        y_train: Integer labels ``0 .. K - 1``.
        x_test: Test images, same layout as ``x_train``.
        y_test: Integer labels.
        class_names: One name per class; ``None`` names classes ``"0" .. "K-1"``
            with ``K = max label + 1``.
    """

    x_train: torch.Tensor | np.ndarray
    y_train: torch.Tensor | np.ndarray
    x_test: torch.Tensor | np.ndarray
    y_test: torch.Tensor | np.ndarray
    class_names: Sequence[str] | None = None


#: A loader: ``(root: Path, download: bool, **kwargs) -> RawData``.
LoaderFn = Callable[..., RawData]

registry = Registry[LoaderFn]("dataset")
register = registry.register
get = registry.get
names = registry.names
create = registry.create


# --------------------------------------------------------------------------- load


def default_root() -> Path:
    """``$GMSEARCH_DATA`` if set, else ``~/.cache/gmsearch/data``."""
    env = os.environ.get("GMSEARCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gmsearch" / "data"


def load(
    name: str,
    root: str | Path | None = None,
    download: bool = True,
    reduced: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> Dataset:
    """Load a registered dataset as train / val / test tensors.

    Args:
        name: Registered loader (see :func:`names`).
        root: Data directory; default :func:`default_root` (``$GMSEARCH_DATA``
            or ``~/.cache/gmsearch/data``).
        download: Let torchvision download missing files. Without it (or if the
            download fails) missing files raise :class:`DatasetNotFoundError`.
        reduced: The paper's reduced protocol (section 4.2): a seeded,
            class-balanced subset of :data:`REDUCED_TRAIN_PER_CLASS` (1,000)
            training and :data:`REDUCED_TEST_PER_CLASS` (100) test images per
            class. A class with fewer images keeps all of them (a warning is
            logged), so e.g. ``digits`` (about 140 training images per class)
            is left unchanged.
        val_fraction: Fraction of the (reduced) training images held out as the
            validation split, stratified by class, in ``[0, 1)``.
        seed: Seeds reduction and the validation split. The same seed gives
            identical splits; another seed different ones. The test split
            without reduction is the source's own, in its original order,
            whatever the seed.
        device: Put every tensor on this device (default: CPU).
        num_classes: Declare the classes ``0 .. num_classes - 1`` (some may be
            absent); without it (and without the loader's class names) labels
            must be ``0 .. K - 1`` with every class in the training split.
        **kwargs: Passed to the loader, e.g. ``path=`` for ``npz`` or
            ``image_size=`` for ``digits``.

    Returns:
        The dataset; train and val images are in a seeded random order.

    Raises:
        UnknownPluginError: ``name`` is not registered (the message lists those that are).
        DatasetNotFoundError: The files are missing and could not be downloaded.
        ValueError: ``val_fraction`` is out of range or the loader returned bad arrays.
    """
    if not isinstance(val_fraction, int | float) or not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    loader = registry.get(name)
    data_root = Path(root).expanduser() if root is not None else default_root()
    raw = loader(root=data_root, download=download, **kwargs)
    if not isinstance(raw, RawData):
        raise TypeError(f"dataset loader {name!r} must return RawData, got {type(raw).__name__}")

    x_train, y_train = _as_images(raw.x_train, f"{name} x_train"), _as_labels(raw.y_train, f"{name} y_train")
    x_test, y_test = _as_images(raw.x_test, f"{name} x_test"), _as_labels(raw.y_test, f"{name} y_test")
    for what, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            raise ValueError(f"dataset {name!r}: {len(x)} {what} images but {len(y)} labels")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"dataset {name!r}: train images {tuple(x_train.shape[1:])} and test images "
            f"{tuple(x_test.shape[1:])} differ in shape"
        )
    class_names = _class_names(raw.class_names, y_train, y_test, name, num_classes)
    num_classes = len(class_names)

    if reduced:
        keep_train = per_class_subset(
            y_train, REDUCED_TRAIN_PER_CLASS, num_classes, seed=seed, stream=1, what=f"{name} train"
        )
        keep_test = per_class_subset(
            y_test, REDUCED_TEST_PER_CLASS, num_classes, seed=seed, stream=2, what=f"{name} test"
        )
        x_train, y_train = x_train[keep_train], y_train[keep_train]
        x_test, y_test = x_test[keep_test], y_test[keep_test]

    train_idx, val_idx = stratified_split(y_train, float(val_fraction), num_classes, seed)
    dataset = Dataset(
        name=name,
        train=Split(x_train[train_idx], y_train[train_idx]),
        val=Split(x_train[val_idx], y_train[val_idx]),
        test=Split(x_test, y_test),
        num_classes=num_classes,
        class_names=class_names,
    )
    return dataset.to(device) if device is not None else dataset


# --------------------------------------------------------------------------- protocol helpers


def _as_images(array: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    """Float32 ``N x C x H x W`` in ``[0, 1]`` from the layouts :class:`RawData` allows."""
    x = torch.as_tensor(np.asarray(array)) if not isinstance(array, torch.Tensor) else array
    x = x.detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4:
        if x.shape[3] <= 4 and x.shape[1] > 4:
            x = x.permute(0, 3, 1, 2)
        elif x.shape[1] > 4:
            raise ValueError(
                f"{what}: cannot tell the channel axis of shape {tuple(x.shape)}; expected "
                "N x H x W x C or N x C x H x W with C <= 4"
            )
    else:
        raise ValueError(
            f"{what}: images must be N x H x W, N x H x W x C or N x C x H x W, got shape {tuple(x.shape)}"
        )
    if x.dtype == torch.uint8:
        return x.contiguous().float().div_(255.0)
    if x.is_floating_point():
        x = x.float().contiguous()
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"{what}: {bad} NaN or infinite pixel value(s); images must be finite, in [0, 1]")
        if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise ValueError(
                f"{what}: float images must lie in [0, 1], got [{float(x.min()):g}, {float(x.max()):g}]"
            )
        return x
    raise ValueError(f"{what}: images must be uint8 (0..255) or float in [0, 1], got {x.dtype}")


def _as_labels(array: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(array)) if not isinstance(array, torch.Tensor) else array
    y = y.detach().cpu()
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{what}: labels must be a 1-D integer array, got {y.dtype} {tuple(y.shape)}")
    y = y.long()
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{what}: labels must be >= 0, got {int(y.min())}")
    return y.contiguous()


def _class_names(
    given: Sequence[str] | None, y_train: torch.Tensor, y_test: torch.Tensor, name: str, num_classes: int | None
) -> tuple[str, ...]:
    """Class names; labels outside the declared classes are an error, never a silent extra class."""
    top = max(int(y_train.max()) if len(y_train) else -1, int(y_test.max()) if len(y_test) else -1)
    if given is not None:
        class_names = tuple(str(c) for c in given)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(f"dataset {name!r}: num_classes={num_classes} but {len(class_names)} class names")
    elif num_classes is not None:
        class_names = tuple(str(c) for c in range(num_classes))
    else:
        missing = sorted(set(range(top + 1)) - set(y_train.unique().tolist()))
        if missing:
            raise ValueError(
                f"dataset {name!r}: labels run to {top} but classes {missing[:10]} have no training image; "
                f"labels must be 0..K-1 with every class present, or pass num_classes explicitly"
            )
        return tuple(str(c) for c in range(top + 1))
    if top >= len(class_names):
        raise ValueError(
            f"dataset {name!r}: label {top} is outside the {len(class_names)} declared classes "
            f"(labels must be 0..{len(class_names) - 1})"
        )
    return class_names


def _missing_error(
    name: str, folder: Path, expected: Sequence[str], detail: str = ""
) -> DatasetNotFoundError:
    missing = [f for f in expected if not (folder / f).is_file()]
    if len(missing) == len(expected):
        missing = []  # all missing: the list of expected files already says it
    return DatasetNotFoundError(
        f"dataset {name!r} not found: looked in {folder} for {', '.join(expected)}"
        + (f" (missing: {', '.join(missing)})" if missing else "")
        + (f"; {detail}" if detail else "")
        + ". Fix: call load(..., download=True) with internet access, or pass root= (or set "
        "$GMSEARCH_DATA) to the directory that holds the files."
    )


# --------------------------------------------------------------------------- built-in loaders


def _torchvision(
    name: str, cls_name: str, root: Path, download: bool, subdir: str, expected: Sequence[str]
) -> RawData:
    """Read one torchvision dataset (train and test) through torchvision's own parser."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    folder = root / subdir
    have_all = all((folder / f).is_file() for f in expected)
    if not have_all and not download:
        raise _missing_error(name, folder, expected, "download=False")
    try:
        train = cls(str(root), train=True, download=download and not have_all)
        test = cls(str(root), train=False, download=False)
    except (RuntimeError, OSError) as exc:  # how torchvision reports missing/corrupt files, failed downloads
        raise _missing_error(name, folder, expected, f"torchvision said: {exc}") from exc
    x_train, x_test = train.data, test.data
    return RawData(
        x_train=torch.as_tensor(np.asarray(x_train)),
        y_train=torch.as_tensor(np.asarray(train.targets)),
        x_test=torch.as_tensor(np.asarray(x_test)),
        y_test=torch.as_tensor(np.asarray(test.targets)),
        class_names=tuple(train.classes),
    )


_IDX_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
_CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")


@register("mnist")
def mnist(root: Path, download: bool = True) -> RawData:
    """MNIST handwritten digits (torchvision), 1x28x28, 60,000 / 10,000."""
    return _torchvision("mnist", "MNIST", root, download, "MNIST/raw", _IDX_FILES)


@register("fashion_mnist")
def fashion_mnist(root: Path, download: bool = True) -> RawData:
    """Fashion-MNIST clothing images (torchvision), 1x28x28, 60,000 / 10,000."""
    return _torchvision("fashion_mnist", "FashionMNIST", root, download, "FashionMNIST/raw", _IDX_FILES)


@register("kmnist")
def kmnist(root: Path, download: bool = True) -> RawData:
    """Kuzushiji-MNIST cursive Japanese characters (torchvision), 1x28x28, 60,000 / 10,000."""
    return _torchvision("kmnist", "KMNIST", root, download, "KMNIST/raw", _IDX_FILES)


@register("cifar10")
def cifar10(root: Path, download: bool = True) -> RawData:
    """CIFAR-10 natural images (torchvision), 3x32x32, 50,000 / 10,000."""
    return _torchvision("cifar10", "CIFAR10", root, download, "cifar-10-batches-py", _CIFAR10_FILES)


@register("digits")
def digits(
    root: Path | None = None, download: bool = True, image_size: int = 16,
    test_fraction: float = 0.2, split_seed: int = 0,
) -> RawData:
    """scikit-learn's 1,797 real 8x8 handwritten digits, upsampled (bilinear) to 1x16x16; no download.

    The set has no official test split, so a fixed stratified one is made
    (``test_fraction``, seeded by ``split_seed``, independent of the ``seed``
    of :func:`load`, so it acts like an official test split). ``root`` and
    ``download`` are unused: the data ships with scikit-learn.
    """
    from sklearn.datasets import load_digits

    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"digits image_size must be a positive int, got {image_size!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"digits test_fraction must be in (0, 1), got {test_fraction!r}")
    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # grey levels 0..16
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        x = x.clamp_(0.0, 1.0)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = stratified_split(y, test_fraction, 10, split_seed)
    # Sorted: a fixed, seed-free order like an official split file.
    train_idx, test_idx = train_idx.sort().values, test_idx.sort().values
    return RawData(
        x_train=x[train_idx], y_train=y[train_idx], x_test=x[test_idx], y_test=y[test_idx],
        class_names=tuple(str(int(n)) for n in bunch.target_names),
    )


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@register("npz")
def npz(root: Path | None = None, download: bool = True, path: str | Path | None = None) -> RawData:
    """Your own arrays: a .npz with x_train, y_train, x_test, y_test (and optional class_names); path=...

    Images are uint8 ``N x H x W`` (grey) or ``N x H x W x C`` (channels-last).
    A relative ``path`` that does not exist is also looked up under ``root``.
    ``download`` is unused.
    """
    if path is None:
        raise ValueError("dataset 'npz' needs path=..., the .npz file holding " + ", ".join(_NPZ_KEYS))
    file = Path(path).expanduser()
    if not file.is_file() and not file.is_absolute() and root is not None and (root / file).is_file():
        file = root / file
    if not file.is_file():
        raise DatasetNotFoundError(
            f"dataset 'npz' not found: no file {file} (also looked under {root}); expected a .npz with "
            f"arrays {', '.join(_NPZ_KEYS)}. Fix: pass path= to an existing file."
        )
    with np.load(file, allow_pickle=False) as arrays:
        missing = [k for k in _NPZ_KEYS if k not in arrays.files]
        if missing:
            raise ValueError(
                f"{file} lacks arrays {', '.join(missing)}; it has {', '.join(arrays.files) or 'none'} "
                f"(need {', '.join(_NPZ_KEYS)})"
            )
        data = {k: arrays[k] for k in _NPZ_KEYS}
        class_names = [str(c) for c in arrays["class_names"]] if "class_names" in arrays.files else None
    return RawData(**data, class_names=class_names)
