"""The hand-engineered networks of Appendix A, and architecture plots."""

from __future__ import annotations

import random

import plotly.graph_objects as go
import pytest
import torch

from gmsearch.nets import zoo
from gmsearch.nets.builder import build
from gmsearch.nets.genome import Block, Genome
from gmsearch.report.plotting import plot_architecture
from gmsearch.search import mutations, prior

pytestmark = pytest.mark.usefixtures("one_thread")


def test_names() -> None:
    assert zoo.names() == ["hand_a", "hand_b"]


def test_hand_a_counts() -> None:
    g = zoo.genome("hand_a")
    n_conv, n_pool, n_sconv, n_sum, n_concat = g.spectrum()
    assert (n_conv, n_pool, n_sconv) == (3, 0, 0)
    assert n_sum + n_concat == 3 and n_sum > 0 and n_concat > 0  # a mix of skip blocks
    assert len(g.head) == 1  # one hidden fc + the implicit classifier = 2 FC blocks


def test_hand_b_counts() -> None:
    g = zoo.genome("hand_b")
    n_conv, n_pool, n_sconv, n_sum, n_concat = g.spectrum()
    assert (n_conv, n_pool, n_sconv) == (4, 1, 0)
    assert n_sum + n_concat == 2
    assert len(g.head) == 1


def test_zoo_genomes_have_no_dead_ends_and_fresh_copies() -> None:
    for name in zoo.names():
        g = zoo.genome(name)
        assert g.live_blocks() == list(range(g.num_blocks))
        assert zoo.genome(name) == g
        assert g.num_blocks + len(g.head) + 1 <= 10  # "not more than ten blocks in total"


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown zoo genome 'resnet'; available: hand_a, hand_b"):
        zoo.genome("resnet")


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_zoo_builds(channels: int, size: int) -> None:
    for name in zoo.names():
        out = build(zoo.genome(name), channels, 10, size)(torch.rand(2, channels, size, size))
        assert out.shape == (2, 10) and torch.isfinite(out).all()


def _node_labels(fig: go.Figure) -> list[str]:
    return [t for trace in fig.data if trace.mode == "markers+text" for t in trace.text]


def test_plot_architecture_zoo() -> None:
    g = zoo.genome("hand_a")
    fig = plot_architecture(g)
    assert isinstance(fig, go.Figure)
    labels = _node_labels(fig)
    # input + body blocks + head fc blocks + classifier
    assert len(labels) == 1 + g.num_blocks + len(g.head) + 1
    assert "0: conv3x3/32" in labels and "5: concat" in labels and "classifier" in labels
    edge_trace = fig.data[0]
    n_edges = sum(len(b.inputs) for b in g.blocks) + len(g.head) + 1
    assert sum(v is None for v in edge_trace.x) == n_edges
    assert fig.layout.title.text == g.summary()
    nodes = [trace for trace in fig.data if trace.mode == "markers+text"]
    xs = {t: x for trace in nodes for t, x in zip(trace.text, trace.x, strict=True)}
    assert xs["input"] == 0 and xs["0: conv3x3/32"] == 1 and xs["2: sum"] == 3  # layered by depth


def test_plot_architecture_marks_dead_ends_and_random_genomes() -> None:
    g = Genome((Block("conv", (-1,), out_channels=8, kernel_size=3), Block("pool", (-1,), pool_type="avg")))
    fig = plot_architecture(g, title="dead end")
    dead = [trace for trace in fig.data if trace.name == "dead"]
    assert len(dead) == 1 and list(dead[0].text) == ["0: conv3x3/8"]
    assert fig.layout.title.text == "dead end"
    rng = random.Random(0)
    for _ in range(5):
        g = mutations.aggressive_mutation(prior.random_genome(rng), rng, k=6)
        assert len(_node_labels(plot_architecture(g))) == g.num_blocks + len(g.head) + 2
    with pytest.raises(TypeError):
        plot_architecture("hand_a")  # type: ignore[arg-type]
