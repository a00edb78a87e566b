"""Plotly figures for gmsearch objects.

:func:`plot_architecture` draws a genome as a layered DAG: the input image on
the left, each body block placed by its depth (longest path from the input),
then the head's FC blocks and the implicit classifier. :func:`plot_budget_curves` draws ``gmsearch
compare``'s best-so-far curves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from gmsearch.nets.genome import Genome

_KIND_COLOURS: dict[str, str] = {
    "input": "#7f7f7f",
    "conv": "#1f77b4",
    "sconv": "#17becf",
    "pool": "#2ca02c",
    "sum": "#ff7f0e",
    "concat": "#d62728",
    "fc": "#9467bd",
    "classifier": "#8c564b",
    "dead": "#c7c7c7",
}


def plot_architecture(genome: Genome, *, title: str | None = None) -> go.Figure:
    """Draw ``genome`` as a left-to-right DAG of its blocks.

    Nodes are labelled with the block index and kind/parameters (e.g.
    ``2: conv3x3/32``) and coloured by kind; blocks that do not feed the body
    output (dead ends, never computed) are grey. Edges run from each input to
    its consumer; skip edges spanning several layers are drawn the same way.

    Args:
        genome: The architecture to draw.
        title: Figure title (default: the genome's one-line summary).

    Returns:
        A ``plotly.graph_objects.Figure``.

    Example:
        >>> from gmsearch import zoo
        >>> fig = plot_architecture(zoo.genome("hand_a"))
    """
    if not isinstance(genome, Genome):
        raise TypeError(f"genome must be a gmsearch Genome, got {type(genome).__name__}")
    live = set(genome.live_blocks())

    # Depth of each node: the input image is 0, a block is 1 + its deepest input.
    depth: dict[int, int] = {-1: 0}
    for i, block in enumerate(genome.blocks):
        depth[i] = 1 + max(depth[s] for s in block.inputs)
    labels: dict[int, str] = {-1: "input"}
    kinds: dict[int, str] = {-1: "input"}
    for i, block in enumerate(genome.blocks):
        labels[i] = f"{i}: {block.label()}"
        kinds[i] = block.kind if i in live else "dead"
    edges = [(s, i) for i, block in enumerate(genome.blocks) for s in block.inputs]

    # Head: a chain after the body output, then the classifier.
    next_depth = depth[genome.output_index] + 1
    previous = genome.output_index
    for j, block in enumerate(genome.head):
        node = len(genome.blocks) + j
        depth[node], labels[node], kinds[node] = next_depth, f"head {j}: {block.label()}", "fc"
        edges.append((previous, node))
        previous, next_depth = node, next_depth + 1
    classifier = len(genome.blocks) + len(genome.head)
    depth[classifier], labels[classifier], kinds[classifier] = next_depth, "classifier", "classifier"
    edges.append((previous, classifier))

    # Layered layout: x = depth, nodes of one layer spread evenly around y = 0.
    layers: dict[int, list[int]] = {}
    for node in sorted(depth):
        layers.setdefault(depth[node], []).append(node)
    position: dict[int, tuple[float, float]] = {}
    for d, nodes in layers.items():
        for rank, node in enumerate(nodes):
            position[node] = (float(d), (len(nodes) - 1) / 2.0 - rank)

    edge_x: list[float | None] = []
    edge_y: list[float | None] = []
    for src, dst in edges:
        (x0, y0), (x1, y1) = position[src], position[dst]
        edge_x += [x0, x1, None]
        edge_y += [y0, y1, None]

    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=edge_x, y=edge_y, mode="lines", line={"color": "#999999", "width": 1.5},
                   hoverinfo="skip", showlegend=False)
    )
    for kind, colour in _KIND_COLOURS.items():
        nodes = [n for n in sorted(position) if kinds[n] == kind]
        if not nodes:
            continue
        fig.add_trace(
            go.Scatter(
                x=[position[n][0] for n in nodes],
                y=[position[n][1] for n in nodes],
                mode="markers+text",
                marker={"size": 18, "color": colour, "line": {"width": 1, "color": "#333333"}},
                text=[labels[n] for n in nodes],
                textposition="top center",
                hovertext=[labels[n] for n in nodes],
                hoverinfo="text",
                name=kind,
            )
        )
    for src, dst in edges:  # arrow heads show direction
        (x0, y0), (x1, y1) = position[src], position[dst]
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y",
                           showarrow=True, arrowhead=2, arrowsize=1, arrowwidth=1,
                           arrowcolor="#999999", standoff=9, text="")
    fig.update_layout(
        title=title if title is not None else genome.summary(),
        xaxis={"visible": False},
        yaxis={"visible": False},
        plot_bgcolor="white",
        legend_title_text="block kind",
    )
    return fig


def plot_transfer_matrix(matrix: Any, *, title: str | None = None) -> go.Figure:
    """A heat map of a :class:`~gmsearch.report.evaluate.TransferEvaluation`: networks by (source/attack)
    sets, then the worst pair, the per-image "all" and the network's own white-box PGD (accuracy in %)."""
    columns = [*matrix.pairs, "worst", "all", "white-box"]
    z = [[100 * v for v in (*row, matrix.worst[n], matrix.all[n], matrix.white_box[n])]
         for n, row in enumerate(matrix.acc)]
    fig = go.Figure(go.Heatmap(
        z=z, x=columns, y=list(matrix.networks), zmin=0, zmax=100, colorscale="RdYlGn",
        text=[[f"{v:.1f}" for v in row] for row in z], texttemplate="%{text}",
        colorbar={"title": "acc (%)"},
    ))
    fig.update_layout(
        title=title or f"Adversarial accuracy on transferred sets ({matrix.split} split, {matrix.n_images} images)",
        yaxis={"autorange": "reversed"}, xaxis={"tickangle": -30},
    )
    return fig


_WAY_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def plot_budget_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], *, title: str | None = None) -> go.Figure:
    """Best-so-far validation fitness against child-epochs, one line per way (the mean over seeds) in a band
    (lowest to highest seed), from ``gmsearch compare``'s ``curves`` (``{way: {x, mean, low, high}}``)."""
    fig = go.Figure()
    for i, (way, c) in enumerate(curves.items()):
        colour = _WAY_COLOURS[i % len(_WAY_COLOURS)]
        x, high = _steps(c["x"], c["high"])
        _, low = _steps(c["x"], c["low"])
        fig.add_trace(go.Scatter(x=x + x[::-1], y=high + low[::-1], fill="toself", fillcolor=colour, opacity=0.18,
                                 line={"width": 0}, hoverinfo="skip", showlegend=False, name=f"{way} band"))
        fig.add_trace(go.Scatter(x=list(c["x"]), y=list(c["mean"]), mode="lines",
                                 line={"color": colour, "shape": "hv"}, name=way))
    fig.update_layout(title=title or "Best validation fitness so far against child-epochs (mean; band: seeds' range)",
                      xaxis_title="child-epochs", yaxis_title="best validation fitness")
    return fig


def _steps(x: Sequence[float], y: Sequence[float]) -> tuple[list[float], list[float]]:
    """The corners of a step curve that holds each ``y`` until the next ``x`` (a band's edge drawn as steps)."""
    xs: list[float] = []
    ys: list[float] = []
    for i, (a, b) in enumerate(zip(x, y, strict=True)):
        if i:
            xs.append(a)
            ys.append(ys[-1])
        xs.append(a)
        ys.append(b)
    return xs, ys
