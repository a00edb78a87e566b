"""The CUDA-graph training step: its control flow on CPU (with a stand-in for CUDA), the real thing on a GPU."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import gmsearch as gms
from gmsearch.data import Dataset
from gmsearch.training import _graphs
from gmsearch.training._graphs import GraphedStep


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph: capture records the step, replay runs it on the static inputs."""

    def __init__(self) -> None:
        self.run: Any = None

    def replay(self) -> None:
        self.run()


class _FakeCuda:
    """Just enough of torch.cuda for GraphedStep's control flow on CPU."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.capturing = False
        self.captures = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        class Stream:
            def __init__(self, *args: object) -> None:
                pass

            def wait_stream(self, other: object) -> None:
                pass

        monkeypatch.setattr(_graphs.torch.cuda, "Stream", Stream)
        monkeypatch.setattr(_graphs.torch.cuda, "CUDAGraph", _FakeGraph)
        monkeypatch.setattr(_graphs.torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(_graphs.torch.cuda, "current_stream", lambda device=None: Stream())
        monkeypatch.setattr(_graphs.torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(_graphs.torch.cuda, "graph", self.graph)

    @contextlib.contextmanager
    def graph(self, graph: _FakeGraph, **kwargs: object) -> Iterator[None]:
        self.captures += 1
        self.capturing = True
        try:
            yield
            if self.fail:
                raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        finally:
            self.capturing = False


def _recorder(fake: _FakeCuda) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], Any]:
    """A step that records what it trains on (capture's recording run excluded) and returns x's row sums."""
    trained: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    static: dict[str, Any] = {}

    def step(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        if fake.capturing:  # record: the replay runs the same step on the same (static) tensors
            static["args"] = (x, y, g)
            static["out"] = torch.zeros(3)
            graph = step.graph  # type: ignore[attr-defined]
            graph.run = lambda: static["out"].copy_(_losses(*static["args"], trained))
            return static["out"]
        return _losses(x, y, g, trained)

    return trained, step


def _losses(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor | None,
            trained: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
    trained.append((x.clone(), y.clone(), None if g is None else g.clone()))
    return torch.stack([x.sum(), y.sum().float(), g.sum() if g is not None else torch.zeros(())])


def _batches(n: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(n)
    return [(torch.rand(size, 1, 4, 4, generator=gen), torch.randint(0, 4, (size,), generator=gen),
             torch.randn(size, 1, 4, 4, generator=gen)) for _ in range(n)]


@pytest.mark.parametrize("fail", [False, True])
def test_every_batch_is_trained_once_in_order_warm_up_capture_replay_partial(
    fail: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = _FakeCuda(fail=fail)
    fake.install(monkeypatch)
    real_graph = _graphs.torch.cuda.CUDAGraph
    trained, step = _recorder(fake)

    def make_graph() -> _FakeGraph:
        step.graph = real_graph()  # type: ignore[attr-defined]
        return step.graph  # type: ignore[attr-defined,no-any-return]

    monkeypatch.setattr(_graphs.torch.cuda, "CUDAGraph", make_graph)
    graphed = GraphedStep(step, batch_size=8, params=[], warmup=2)
    # partial batches end each epoch; one comes before the warm-up is over (it does not count as warm-up)
    batches = _batches(1, 8) + _batches(1, 5) + _batches(5, 8) + _batches(1, 6) + _batches(3, 8)
    with caplog.at_level(logging.WARNING, logger="gmsearch.training._graphs"):
        outs = [graphed(*b).clone() for b in batches]
    assert len(trained) == len(batches), "each batch trains exactly once (the capture itself trains none)"
    for (x, y, g), (tx, ty, tg) in zip(batches, trained, strict=True):
        assert torch.equal(x, tx) and torch.equal(y, ty) and tg is not None and torch.equal(g, tg)
    for (x, y, g), out in zip(batches, outs, strict=True):
        assert torch.allclose(out, torch.stack([x.sum(), y.sum().float(), g.sum()]))
    assert fake.captures == 1, "one capture per child; a failed one is not retried"
    if fail:
        assert graphed.failed is not None and "not permitted" in graphed.failed and "\n" not in graphed.failed
        assert (graphed.replays, graphed.eager) == (0, len(batches))
        assert len([r for r in caplog.records if "capture failed" in r.message]) == 1
    else:
        assert graphed.failed is None and graphed.capture_seconds is not None
        assert (graphed.replays, graphed.eager) == (7, 4)  # 2 full warm-up batches and the 2 partial ones eager
        assert not caplog.records


def test_train_ignores_cuda_graph_on_cpu(tiny_data: Callable[[int], Dataset]) -> None:
    data = tiny_data(40)
    ref = gms.build(gms.zoo.genome("hand_b"), 1, 4, 8).eval()
    nets = []
    for graph in (False, True):
        torch.manual_seed(0)
        net = gms.build(gms.zoo.genome("hand_b"), 1, 4, 8)
        gms.train(net, data, reference=ref, lam=1.0, epochs=2, batch_size=16, device="cpu", cuda_graph=graph)
        nets.append(torch.cat([t.flatten().float() for t in net.state_dict().values()]))
    assert torch.equal(nets[0], nets[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_a_graphed_child_trains_as_the_eager_one_on_a_gpu(lam: float) -> None:
    data = gms.datasets.load("digits", seed=0, image_size=16)
    torch.manual_seed(0)
    ref = gms.build(gms.zoo.genome("hand_b"), 1, 10, 16).cuda().eval()
    torch.backends.cudnn.deterministic = True  # the same kernels in both runs
    try:
        results = []
        for graph in (False, True):
            torch.manual_seed(1)
            net = gms.build(gms.zoo.genome("hand_a"), 1, 10, 16)
            out = gms.train(net, data, reference=ref, lam=lam, epochs=2, batch_size=128, device="cuda",
                            cuda_graph=graph, seed=2)
            results.append((torch.cat([t.flatten().float() for t in net.state_dict().values()]), out))
    finally:
        torch.backends.cudnn.deterministic = False
    (eager, eager_out), (graphed, graphed_out) = results
    assert eager_out.cuda_graph is None
    summary = graphed_out.cuda_graph
    assert summary is not None and summary["failed"] is None and summary["capture_seconds"] is not None
    n = len(data.train.y)  # 2 epochs of n // 128 full batches (3 of them warm-up) and a partial one each
    assert (summary["replays"], summary["eager"]) == (2 * (n // 128) - 3, 3 + 2 * (n % 128 >= 2))
    eager_final, graphed_final = eager_out.final, graphed_out.final
    torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-5)
    assert graphed_final["loss"] == pytest.approx(eager_final["loss"], rel=1e-4)
