"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from gmsearch.data import Dataset, Split


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: tiny networks gain nothing from intra-op threads, and on a busy machine lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def quick_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``GMSEARCH_QUICK=1``: documented scripts and README examples shrink to seconds."""
    monkeypatch.setenv("GMSEARCH_QUICK", "1")



@pytest.fixture
def tiny_data() -> Callable[[int], Dataset]:
    """``tiny_data(n_train)``: random 1x8x8 images of 4 classes (train, then 16 val and 16 test), seeded."""

    def make(n_train: int) -> Dataset:
        g = torch.Generator().manual_seed(0)

        def split(n: int) -> Split:
            return Split(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))

        return Dataset(name="tiny", train=split(n_train), val=split(16), test=split(16), num_classes=4,
                       class_names=("a", "b", "c", "d"))

    return make
