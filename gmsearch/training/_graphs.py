"""A child's training step captured once in a CUDA graph and replayed for every full batch.

A small network's GM step on a GPU is launch-bound: a few hundred kernels of
microseconds each, every one launched from Python. A CUDA graph records the
whole step (forward, input backward, the backward through both, the Adam
update) once and replays it with one launch. Each child has fixed shapes
(its batch size, its images), so one capture serves every full batch; the
last, partial batch of an epoch runs eagerly on the same parameters and
optimiser state, so the training is the same step for step.

:class:`GraphedStep` wraps the step function of :func:`gmsearch.train`:

- The first ``warmup`` full batches run eagerly, as real training steps, on
  the side stream the capture will use (cuDNN's autotuner, lazily created
  handles and the optimiser's state are set up before capture, as PyTorch's
  CUDA-graph recipe asks). Capture then records the step without running it.
- Each later full batch is copied into the static input buffers and the
  graph is replayed; the step's losses come back in a static output tensor.
- Where capture fails (an operation that cannot be captured, such as a host
  synchronisation in a user's plugin), the failure is logged once and the
  child goes on eagerly. Capture runs no kernels, so a failed capture has
  changed nothing; the batch it was for runs eagerly.

The optimiser must keep its step count on the device (``capturable=True``
for Adam), which :func:`gmsearch.train` sets when it graphs the step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

#: ``step(x, y, ref_grad)`` -> the step's losses (detached, on the device).
Step = Callable[[Tensor, Tensor, Tensor | None], Tensor]


class GraphedStep:
    """``step`` captured in a CUDA graph after ``warmup`` eager full batches (see the module docstring).

    Args:
        step: The eager training step: ``step(x, y, ref_grad) -> losses``.
        batch_size: The full batch size (the only shape that is replayed).
        params: The trained parameters: their gradient buffers recorded by the capture stay
            allocated while the graph lives (an eager partial batch sets new ones).
        warmup: Eager full batches before the capture (PyTorch's recipe uses a few).

    Attributes:
        capture_seconds: Wall time of the capture (None until captured).
        replays: Batches run by replaying the graph.
        eager: Batches run eagerly (warm-up, partial batches, after a failed capture).
    """

    def __init__(self, step: Step, batch_size: int, params: list[torch.nn.Parameter], *, warmup: int = 3) -> None:
        self.step = step
        self.batch_size = batch_size
        self.params = params
        self.warmup = warmup
        self.capture_seconds: float | None = None
        self.replays = 0
        self.eager = 0
        self.failed: str | None = None
        self._warmed = 0  # full batches run eagerly before the capture
        self._graph: torch.cuda.CUDAGraph | None = None
        self._stream: torch.cuda.Stream | None = None
        self._inputs: tuple[Tensor, Tensor, Tensor | None] | None = None
        self._output: Tensor | None = None
        self._grads: list[Tensor | None] = []  # the graph's gradient buffers

    def __call__(self, x: Tensor, y: Tensor, ref_grad: Tensor | None) -> Tensor:
        if len(x) != self.batch_size or self.failed is not None:
            return self._eager(x, y, ref_grad)
        if self._graph is None:
            if self._warmed < self.warmup:
                self._warmed += 1
                return self._eager(x, y, ref_grad, side_stream=True)
            if not self._capture(x, y, ref_grad):
                return self._eager(x, y, ref_grad)
        assert self._inputs is not None and self._output is not None and self._graph is not None
        static_x, static_y, static_g = self._inputs
        static_x.copy_(x)
        static_y.copy_(y)
        if static_g is not None and ref_grad is not None:
            static_g.copy_(ref_grad)
        self._graph.replay()
        self.replays += 1
        return self._output

    def summary(self) -> dict[str, Any]:
        """What the graph did: capture seconds, replayed and eager batches, and why capture failed (if it did)."""
        return {"capture_seconds": self.capture_seconds, "replays": self.replays, "eager": self.eager,
                "failed": self.failed}

    def _eager(self, x: Tensor, y: Tensor, ref_grad: Tensor | None, *, side_stream: bool = False) -> Tensor:
        self.eager += 1
        if not side_stream:
            return self.step(x, y, ref_grad)
        stream = self._side_stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            out = self.step(x, y, ref_grad)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        return out

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        return self._stream

    def _capture(self, x: Tensor, y: Tensor, ref_grad: Tensor | None) -> bool:
        """Record the step on static buffers shaped like this batch; False (and logged) where it fails."""
        static_g = torch.empty_like(ref_grad) if ref_grad is not None else None
        inputs = (torch.empty_like(x), torch.empty_like(y), static_g)
        stream = self._side_stream(x.device)
        graph = torch.cuda.CUDAGraph()
        t0 = time.perf_counter()
        try:
            stream.wait_stream(torch.cuda.current_stream(x.device))
            # thread_local: Optuna's heartbeat thread may touch the process meanwhile (it makes no CUDA calls)
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                output = self.step(*inputs)
            torch.cuda.current_stream(x.device).wait_stream(stream)
        except Exception as exc:  # any capture failure: this child trains eagerly
            self.failed = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            logger.warning("CUDA graph capture failed (%s); this child trains without it", self.failed)
            torch.cuda.synchronize(x.device)
            return False
        self.capture_seconds = time.perf_counter() - t0
        self._graph, self._inputs, self._output = graph, inputs, output
        self._grads = [p.grad for p in self.params]
        return True
