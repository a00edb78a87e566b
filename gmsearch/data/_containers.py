"""The dataset containers: a split (images and labels) and a dataset (train / val / test)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gmsearch.cache import content_hash


@dataclass(frozen=True, eq=False)
class Split:
    """Images and labels of one split.

    Attributes:
        x: float32 images, ``N x C x H x W``, values in ``[0, 1]``.
        y: int64 labels, ``N``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.x.dtype != torch.float32:
            raise ValueError(
                f"Split.x must be a float32 N x C x H x W tensor, got {self.x.dtype} {tuple(self.x.shape)}"
            )
        if self.y.dim() != 1 or self.y.dtype != torch.int64:
            raise ValueError(f"Split.y must be an int64 vector, got {self.y.dtype} {tuple(self.y.shape)}")
        if len(self.x) != len(self.y):
            raise ValueError(f"Split has {len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: str | torch.device) -> Split:
        """This split with both tensors on ``device``."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset with train, validation and test splits.

    Attributes:
        name: The registered loader name (``"cifar10"``, ``"digits"``, ...).
        train: Images the networks are trained on.
        val: Held out from ``train``; the search scores children on it.
        test: The source's test images; results are reported on it.
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``.
        class_names: One readable name per class.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        shapes = {tuple(s.x.shape[1:]) for s in (self.train, self.val, self.test)}
        if len(shapes) != 1:
            raise ValueError(f"splits of dataset {self.name!r} have different image shapes: {shapes}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(C, H, W)``."""
        c, h, w = self.train.x.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def device(self) -> torch.device:
        """Device the tensors live on."""
        return self.train.x.device

    def to(self, device: str | torch.device) -> Dataset:
        """This dataset with every tensor on ``device`` (the fingerprint is kept)."""
        moved = Dataset(
            name=self.name,
            train=self.train.to(device),
            val=self.val.to(device),
            test=self.test.to(device),
            num_classes=self.num_classes,
            class_names=self.class_names,
        )
        object.__setattr__(moved, "_fingerprint", self._fingerprint)
        return moved

    def fingerprint(self) -> str:
        """Stable content hash of the name, classes and every split (for cache keys).

        Device independent; computed once and memoised.
        """
        if self._fingerprint is None:
            digest = content_hash(
                "dataset", self.name, self.num_classes, list(self.class_names),
                *(t for s in (self.train, self.val, self.test) for t in (s.x, s.y)),
            )
            object.__setattr__(self, "_fingerprint", digest)
        assert self._fingerprint is not None
        return self._fingerprint

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )
