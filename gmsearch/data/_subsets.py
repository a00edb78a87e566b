"""Seeded per-class subsets: the reduced protocol, the validation split, caps for quick runs, resizing."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from gmsearch.data._containers import Dataset, Split

logger = logging.getLogger(__name__)


def _rng(seed: int, stream: int) -> np.random.Generator:
    # Independent streams per purpose, so reduction does not shift the val split's draws.
    return np.random.default_rng([int(seed), stream])


def per_class_subset(
    y: torch.Tensor, per_class: int, num_classes: int, *, seed: int, stream: int, what: str | None = None
) -> torch.Tensor:
    """Indices (sorted, so source order is kept) of up to ``per_class`` images of each class.

    Seeded by ``(seed, stream)``; with ``what``, classes short of ``per_class`` are logged.
    """
    rng = _rng(seed, stream)
    labels = y.cpu().numpy()
    keep: list[np.ndarray] = []
    short: list[str] = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            short.append(f"{c}: {len(idx)}")
        keep.append(rng.permutation(idx)[:per_class])
    if short and what is not None:
        logger.warning(
            "%s: reduced protocol wants %d images per class; these classes have fewer and keep all: %s",
            what, per_class, ", ".join(short),
        )
    return torch.from_numpy(np.sort(np.concatenate(keep)))


def stratified_split(
    y: torch.Tensor, val_fraction: float, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified (train, val) indices, each in a seeded random order."""
    rng = _rng(seed, 3)
    labels = y.numpy()
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = round(val_fraction * len(idx))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    train_idx = rng.permutation(np.concatenate(train))
    val_idx = rng.permutation(np.concatenate(val))
    return torch.from_numpy(train_idx.astype(np.int64)), torch.from_numpy(val_idx.astype(np.int64))


def _capped(part: Split, per_class: int | None, num_classes: int, seed: int, stream: int) -> Split:
    if per_class is None:
        return part
    keep = per_class_subset(part.y, per_class, num_classes, seed=seed, stream=stream).to(part.y.device)
    return Split(part.x[keep], part.y[keep])


def limit_per_class(
    data: Dataset, *, train: int | None = None, test: int | None = None, seed: int = 0
) -> Dataset:
    """At most ``train`` training (and ``train // 9`` validation) and ``test`` test images per class."""
    if train is None and test is None:
        return data
    val = None if train is None else max(2, train // 9)
    return Dataset(
        name=f"{data.name}[{train},{test}]",
        train=_capped(data.train, train, data.num_classes, seed, 11),
        val=_capped(data.val, val, data.num_classes, seed, 12),
        test=_capped(data.test, test, data.num_classes, seed, 13),
        num_classes=data.num_classes, class_names=data.class_names,
    )


def resize_dataset(data: Dataset, size: int) -> Dataset:
    """Every split resized to ``size x size`` (bilinear, antialiased, clamped to ``[0, 1]``)."""

    def resize(part: Split) -> Split:
        if tuple(part.x.shape[-2:]) == (size, size):
            return part
        x = F.interpolate(part.x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return Split(x.clamp_(0.0, 1.0).contiguous(), part.y)

    return Dataset(
        name=f"{data.name}@{size}px", train=resize(data.train), val=resize(data.val), test=resize(data.test),
        num_classes=data.num_classes, class_names=data.class_names,
    )
