"""The lineage figure: every trial by number and generation, parent edges, replacements, final population."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from optuna.trial import TrialState

from gmsearch.report._page import _esc, _fmt, _pct

_KIND_SYMBOLS = {"initial candidate": "square", "child: replaced a candidate": "diamond",
                 "child: rejected": "circle", "not completed": "x"}


def _kind(row: dict[str, Any]) -> str:
    if row["state"] != TrialState.COMPLETE.name:
        return "not completed"
    if row["parent"] is None:
        return "initial candidate"
    return "child: replaced a candidate" if row["replaced"] is not None else "child: rejected"


def _hover(row: dict[str, Any], names: Sequence[str]) -> str:
    values = ", ".join(_fmt(v) for v in row["values"]) if row["values"] else "-"
    replaced = f"<br>replaced #{row['replaced']}" if row["replaced"] is not None else ""
    return (
        f"trial #{row['number']} ({row['state'].lower()})<br>generation {row['generation']}, parent "
        f"{_fmt(row['parent'])}<br>{_esc(', '.join(names))} {values}<br>clean {_pct(row['clean_acc'])}, "
        f"adv {_pct(row['adv_acc'])}{replaced}<br>{_esc(row['architecture'] or '')}"
    )


def _lineage_figure(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> go.Figure:
    """Every trial by number and generation: parent edges, replacements, final population ringed."""
    by_number = {r["number"]: r for r in rows}
    fig = go.Figure()
    lines: dict[str, tuple[list[float | None], list[float | None]]] = {"parent": ([], []), "replaced": ([], [])}
    for r in rows:
        for key in lines:
            source = by_number.get(r[key]) if r[key] is not None else None
            if source is not None:
                lines[key][0].extend([source["number"], r["number"], None])
                lines[key][1].extend([source["generation"], r["generation"], None])
    fig.add_trace(go.Scatter(x=lines["parent"][0], y=lines["parent"][1], mode="lines", name="parent → child",
                             line={"color": "#9aa5b1", "width": 1}, hoverinfo="skip"))
    if lines["replaced"][0]:
        fig.add_trace(go.Scatter(x=lines["replaced"][0], y=lines["replaced"][1], mode="lines",
                                 name="replaced candidate ← child", hoverinfo="skip",
                                 line={"color": "#d64545", "width": 1.2, "dash": "dot"}))
    scores = [r["values"][0] for r in rows if r["state"] == TrialState.COMPLETE.name and r["values"]]
    lo, hi = (min(scores), max(scores)) if scores else (0.0, 1.0)
    show_scale = True
    for label, symbol in _KIND_SYMBOLS.items():
        group = [r for r in rows if _kind(r) == label]
        if not group:
            continue
        marker: dict[str, Any] = {"symbol": symbol, "size": 11, "line": {"width": 1, "color": "#334e68"}}
        if label == "not completed":
            marker.update(color="#9aa5b1", line={"width": 2, "color": "#9aa5b1"})
        else:
            marker.update(
                color=[r["values"][0] if r["values"] else lo for r in group], colorscale="Viridis", cmin=lo, cmax=hi,
                showscale=show_scale, colorbar={"title": {"text": names[0]}, "x": 1.02, "len": 0.8},
            )
            show_scale = False
        fig.add_trace(go.Scatter(
            x=[r["number"] for r in group], y=[r["generation"] for r in group], mode="markers", name=label,
            marker=marker, hovertext=[_hover(r, names) for r in group], hoverinfo="text",
        ))
    members = [r for r in rows if r["in_population"]]
    if members:
        fig.add_trace(go.Scatter(
            x=[r["number"] for r in members], y=[r["generation"] for r in members], mode="markers",
            name="final population", hoverinfo="skip",
            marker={"symbol": "circle-open", "size": 22, "color": "#f0b429", "line": {"width": 2.5}},
        ))
    fig.update_layout(
        title="Lineage: every trial by trial number and generation",
        xaxis={"title": {"text": "trial number"}},
        yaxis={"title": {"text": "generation"}, "dtick": 1},
        legend={"orientation": "h", "y": -0.18, "yanchor": "top", "x": 0},
        plot_bgcolor="#fbfcfd",
    )
    return fig
