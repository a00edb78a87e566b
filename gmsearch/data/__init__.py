"""Data: the dataset registry and loaders (digits, torchvision sets, npz), splits and per-class subsets.

Every loader returns images in [0, 1] as N x C x H x W tensors; `load` adds a
stratified validation split and, on request, the paper's reduced protocol.
"""

from __future__ import annotations

from gmsearch.data._loaders import (
    REDUCED_TEST_PER_CLASS,
    REDUCED_TRAIN_PER_CLASS,
    Dataset,
    DatasetNotFoundError,
    LoaderFn,
    RawData,
    Split,
    create,
    default_root,
    get,
    load,
    names,
    register,
    registry,
)
from gmsearch.data._subsets import limit_per_class, per_class_subset, resize_dataset

__all__ = [
    "REDUCED_TEST_PER_CLASS",
    "REDUCED_TRAIN_PER_CLASS",
    "Dataset",
    "DatasetNotFoundError",
    "LoaderFn",
    "RawData",
    "Split",
    "create",
    "default_root",
    "get",
    "limit_per_class",
    "load",
    "names",
    "per_class_subset",
    "register",
    "registry",
    "resize_dataset",
]
