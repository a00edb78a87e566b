"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


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

