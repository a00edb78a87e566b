"""Ctrl-C as a request to stop at a safe point, not an exception that lands wherever it happens to.

Under :func:`stop_on_sigint`, the first SIGINT only sets a flag. Training
checks it between minibatch steps (:func:`check`), attacks between chunks and
the runner between trials; the first to see it raises
:class:`~gmsearch.errors.Interrupted`. The runner then re-queues the
interrupted child with its genome and parent, so running the same command
again trains it again. A second SIGINT raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from gmsearch.errors import Interrupted

MESSAGE = "interrupted; run the same command again to resume"

_requested = threading.Event()


def requested() -> bool:
    """Whether Ctrl-C asked the run to stop."""
    return _requested.is_set()


def request() -> None:
    """Ask the run to stop at the next safe point (what the first Ctrl-C does)."""
    _requested.set()


def check() -> None:
    """Raise :class:`~gmsearch.errors.Interrupted` if the run was asked to stop."""
    if _requested.is_set():
        raise Interrupted(MESSAGE)


@contextmanager
def stop_on_sigint() -> Iterator[None]:
    """Within the block, the first SIGINT requests a stop at a safe point; a second one stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if _requested.is_set():
            raise KeyboardInterrupt
        _requested.set()  # the run stops within a minibatch step and says so in one line

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()
