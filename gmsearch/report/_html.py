"""``gmsearch report``: one self-contained HTML page that describes a study.

The page needs no network to be viewed: plotly.js is embedded once, inline,
and every figure after it reuses it. Sections, each present when its data is:

- summary: trials by state, best trial, the sampler settings stored on the study;
- baseline table (Ref, Ref+GM, NE+GM: clean and adversarial accuracy), passed in
  or stored on the study under :data:`BASELINE_KEY` (see :func:`store_baseline`);
- Optuna's optimization history (a Pareto front for two or three objectives),
  param importances, parallel coordinate and timeline plots;
- the final population: one architecture graph per candidate, with its
  fitness and clean/adversarial accuracy;
- the lineage: trial number against generation with parent edges, children
  that replaced a candidate marked, and a table of every trial;
- attribution maps, passed in as plotly figures or stored on the study
  (:func:`store_attributions`: a study user attr, or an Optuna artifact).

Example:
    >>> import gmsearch as gms
    >>> study = gms.load_study(study_name="quickstart", storage="sqlite:///gmsearch_quickstart.db")
    >>> gms.report.write_report(study, "report.html")
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import logging
import math
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.io as pio
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.trial import FrozenTrial, TrialState
from plotly.offline import get_plotlyjs

from gmsearch import __version__
from gmsearch.nets.genome import Genome, GenomeError
from gmsearch.report.plotting import plot_architecture
from gmsearch.search.baselines import Row
from gmsearch.search.schema import (
    ARCH_KEY,
    ATTACK_KEY,
    ATTRIBUTIONS_KEY,
    BASELINE_KEY,
    GENERATION_KEY,
    GENOME_KEY,
    PARENT_KEY,
    SAMPLER_KEY,
    genome_of,
)
from gmsearch.search.selection import lineage, population

logger = logging.getLogger(__name__)

#: File name of attribution maps uploaded as a study artifact (see :func:`store_attributions`).
ATTRIBUTIONS_ARTIFACT = "gmsearch_attributions.json"

# --- what the study stores for the report ---------------------------------------------------------


def _row_from(item: Row | Mapping[str, Any]) -> Row:
    if isinstance(item, Row):
        return item
    try:
        return Row(
            name=str(item["name"]),
            clean_acc=float(item["clean_acc"]),
            adv_acc=float(item["adv_acc"]),
            fooling_rate=None if item.get("fooling_rate") is None else float(item["fooling_rate"]),
            detail=str(item.get("detail", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"bad baseline row {item!r}: need name, clean_acc, adv_acc (optional fooling_rate, detail)"
        ) from exc


def store_baseline(study: optuna.Study, rows: Iterable[Row | Mapping[str, Any]], *, title: str = "") -> None:
    """Keep the baseline table on the study (user attr :data:`BASELINE_KEY`) for :func:`write_report`.

    Args:
        study: The study the table belongs to.
        rows: :class:`~gmsearch.experiments.Row` objects (or dicts with the same fields), e.g.
            Ref, Ref+GM and NE+GM on the test split.
        title: Caption; name the split, the attack and its budget.
    """
    table = {"title": title, "rows": [dataclasses.asdict(_row_from(r)) for r in rows]}
    study.set_user_attr(BASELINE_KEY, table)


def load_baseline(study: optuna.Study) -> tuple[str, list[Row]] | None:
    """The baseline table stored by :func:`store_baseline` as ``(title, rows)``, or None."""
    stored = study.user_attrs.get(BASELINE_KEY)
    if stored is None:
        return None
    if isinstance(stored, Mapping):
        return str(stored.get("title", "")), [_row_from(r) for r in stored.get("rows", [])]
    return "", [_row_from(r) for r in stored]


def store_attributions(
    study: optuna.Study, figure: go.Figure, *, artifact_store: FileSystemArtifactStore | None = None
) -> None:
    """Keep attribution maps (a plotly figure) with the study for :func:`write_report`; the latest call wins.

    Args:
        study: The study the maps belong to.
        figure: The attribution maps, e.g. integrated gradients of the reference and the evolved nets.
        artifact_store: Upload the figure as a study artifact (for large figures) and keep
            ``{"artifact_id": ...}`` in the study user attr :data:`ATTRIBUTIONS_KEY`; None keeps the
            figure's JSON itself there.
    """
    text = figure.to_json()
    if artifact_store is None:
        study.set_user_attr(ATTRIBUTIONS_KEY, text)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ATTRIBUTIONS_ARTIFACT
        path.write_text(text, encoding="utf-8")
        artifact_id = upload_artifact(artifact_store=artifact_store, file_path=str(path), study_or_trial=study)
    study.set_user_attr(ATTRIBUTIONS_KEY, {"artifact_id": artifact_id})


def _stored_attributions(
    study: optuna.Study, artifact_store: FileSystemArtifactStore | None
) -> tuple[list[go.Figure], list[str]]:
    """The attribution figure kept with the study (if any), and notes on why it could not be read."""
    stored = study.user_attrs.get(ATTRIBUTIONS_KEY)
    if stored is None:
        return [], []
    if isinstance(stored, Mapping) and "artifact_id" in stored:
        artifact_id = str(stored["artifact_id"])
        if artifact_store is None:
            return [], [
                f"attribution maps are stored as artifact {artifact_id}; pass the artifact store "
                "(gmsearch report --artifacts DIR) to include them"
            ]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ATTRIBUTIONS_ARTIFACT
            try:
                download_artifact(artifact_store=artifact_store, artifact_id=artifact_id, file_path=str(path))
                return [pio.from_json(path.read_text(encoding="utf-8"))], []
            except (OSError, ValueError) as exc:
                return [], [f"could not read attribution artifact {artifact_id}: {_brief(exc)}"]
    try:
        return [pio.from_json(stored if isinstance(stored, str) else json.dumps(stored))], []
    except (ValueError, TypeError) as exc:
        return [], [f"study user attr {ATTRIBUTIONS_KEY!r} is not a plotly figure: {_brief(exc)}"]


# --- opening a study by URL and name --------------------------------------------------------------


def _brief(exc: BaseException) -> str:
    """The first line of an error message, short enough for a note (plotly's run to pages)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text[:200]}"


# --- HTML building blocks ---------------------------------------------------------------------------

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; margin: 0;
       color: #1f2933; background: #f5f7fa; }
header { background: #243b53; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 24px; }
header p { margin: 0; color: #d9e2ec; font-size: 14px; }
nav { padding: 8px 32px; background: #e4e7eb; font-size: 14px; }
nav a { margin-right: 16px; color: #243b53; }
main { max-width: 1360px; margin: 0 auto; padding: 8px 24px 40px 24px; }
section { background: #fff; border-radius: 6px; padding: 12px 20px 16px 20px; margin: 16px 0;
          box-shadow: 0 1px 3px rgba(0, 0, 0, 0.12); }
h2 { font-size: 20px; margin: 6px 0 10px 0; color: #243b53; }
h3 { font-size: 15px; margin: 12px 0 4px 0; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border-bottom: 1px solid #d9e2ec; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f4f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.highlight td { background: #fff8e1; }
.note { color: #52606d; font-size: 13px; font-style: italic; margin: 6px 0; }
.caption { color: #3e4c59; font-size: 13px; margin: 2px 0 6px 0; }
.figure { width: 100%; }
.card { border: 1px solid #d9e2ec; border-radius: 4px; padding: 6px 8px; margin: 10px 0; }
table.kv td:first-child { font-weight: 600; white-space: nowrap; }
.card h3 { margin: 2px 0; }
code { font-size: 12px; }
details summary { cursor: pointer; color: #243b53; margin: 6px 0; }
footer { color: #7b8794; font-size: 12px; text-align: center; padding: 12px; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object, *, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: Sequence[bool] = (),
           highlight: Callable[[int], bool] | None = None) -> str:
    """An HTML table; every cell is escaped."""
    out = ["<table><thead><tr>", *(f"<th>{_esc(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = ' class="highlight"' if highlight is not None and highlight(i) else ""
        out.append(f"<tr{cls}>")
        for j, cell in enumerate(row):
            num = ' class="num"' if j < len(numeric) and numeric[j] else ""
            out.append(f"<td{num}>{_esc(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _key_values(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table without header; every cell is escaped."""
    body = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


class _Page:
    """Sections of the report; figures share the one inline copy of plotly.js in the page head."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str, list[str]]] = []
        self._n_figures = 0

    def section(self, anchor: str, heading: str) -> list[str]:
        parts: list[str] = []
        self.sections.append((anchor, heading, parts))
        return parts

    def figure(self, fig: go.Figure, *, height: int = 460, top: int = 60) -> str:
        self._n_figures += 1
        fig.update_layout(height=height, autosize=True, margin={"l": 60, "r": 30, "t": top, "b": 50})
        body = pio.to_html(
            fig, full_html=False, include_plotlyjs=False, div_id=f"gms-fig-{self._n_figures}",
            default_width="100%", default_height=f"{height}px", config={"responsive": True, "displaylogo": False},
        )
        return f'<div class="figure">{body}</div>'

    def render(self, title: str, subtitle: str) -> str:
        nav = "".join(f'<a href="#{_esc(a)}">{_esc(h)}</a>' for a, h, _ in self.sections)
        body = "".join(
            f'<section id="{_esc(a)}"><h2>{_esc(h)}</h2>{"".join(parts)}</section>' for a, h, parts in self.sections
        )
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
            f"<header><h1>{_esc(title)}</h1><p>{_esc(subtitle)}</p></header><nav>{nav}</nav>"
            f"<main>{body}</main><footer>written by gmsearch {_esc(__version__)} with Optuna "
            f"{_esc(optuna.__version__)} on {_esc(stamp)}</footer></body></html>\n"
        )


# --- sections ---------------------------------------------------------------------------------------


def _objective_names(study: optuna.Study) -> list[str]:
    names = study.metric_names
    if names is not None:
        return list(names)
    return ["fitness"] if len(study.directions) == 1 else [f"objective {i}" for i in range(len(study.directions))]


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]


def _values_text(trial: FrozenTrial) -> str:
    return ", ".join(_fmt(v) for v in trial.values) if trial.values else "-"


def _setting(value: object) -> str:
    """A sampler setting as short text: tables as ``k=v`` pairs, lists comma-separated."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_setting(v)}" for k, v in value.items() if v is not None) or "-"
    if isinstance(value, list):
        return ", ".join(_setting(v) for v in value) or "-"
    return "-" if value is None else _fmt(value)


def _summary(page: _Page, study: optuna.Study) -> None:
    parts = page.section("summary", "Summary")
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    names = _objective_names(study)
    rows: list[tuple[str, str]] = [
        ("study", study.study_name),
        ("objectives", ", ".join(f"{n} ({d.name.lower()})" for n, d in zip(names, study.directions, strict=True))),
        ("trials", f"{len(trials)}: " + ", ".join(f"{k.lower()} {v}" for k, v in counts.items() if v)),
    ]
    complete = _complete(study)
    if complete and len(study.directions) == 1:
        best = study.best_trial
        rows.append((
            "best trial",
            f"#{best.number}: {names[0]} {_fmt(best.value)}, clean {_pct(best.user_attrs.get('clean_acc'))}, "
            f"adv {_pct(best.user_attrs.get('adv_acc'))}",
        ))
    elif complete:
        rows.append(("Pareto-optimal trials", ", ".join(f"#{t.number}" for t in study.best_trials)))
    attack = study.user_attrs.get(ATTACK_KEY)
    if isinstance(attack, dict):
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in (attack.get("params") or {}).items())
        rows.append(("attack", f"{attack.get('name')}({params})"))
    parts.append(_key_values(rows))
    config = study._storage.get_study_system_attrs(study._study_id).get(SAMPLER_KEY)
    if config:
        parts.append("<h3>Sampler</h3>" + _table(
            ["setting", "value"], [(key, _setting(value)) for key, value in config.items()], numeric=[False, False]
        ))
    else:
        parts.append(_note("no gmsearch sampler settings stored (not a NicheEvolutionSampler study?)"))


def _baseline(page: _Page, title: str, rows: Sequence[Row]) -> None:
    parts = page.section("baseline", "Baseline table")
    if title:
        parts.append(f'<p class="caption">{_esc(title)}</p>')
    parts.append(_table(
        ["network", "clean acc", "adv acc", "fooling rate", "detail"],
        [(r.name, _pct(r.clean_acc), _pct(r.adv_acc), _pct(r.fooling_rate), r.detail) for r in rows],
        numeric=[False, True, True, True, False],
    ))
    fig = go.Figure([
        go.Bar(name="clean accuracy", x=[r.name for r in rows], y=[100 * r.clean_acc for r in rows]),
        go.Bar(name="adversarial accuracy", x=[r.name for r in rows], y=[100 * r.adv_acc for r in rows]),
    ])
    fig.update_layout(barmode="group", yaxis_title="accuracy (%)", yaxis_range=[0, 100],
                      title="Clean and transferred-adversarial accuracy")
    parts.append(page.figure(fig, height=340))


def _optuna_plot(make: Callable[[], go.Figure]) -> go.Figure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API and "too few trials" warnings: the note says why
        return make()


def _search_plots(page: _Page, study: optuna.Study) -> None:
    vis = optuna.visualization
    names = _objective_names(study)
    complete = _complete(study)
    n_obj = len(study.directions)

    if n_obj == 1:
        parts = page.section("history", "Optimization history")
        if complete:
            parts.append(page.figure(_optuna_plot(lambda: vis.plot_optimization_history(study, target_name=names[0]))))
        else:
            parts.append(_note("no completed trials yet"))
    else:
        parts = page.section("pareto", "Pareto front")
        if not complete:
            parts.append(_note("no completed trials yet"))
        elif n_obj in (2, 3):
            parts.append(page.figure(_optuna_plot(lambda: vis.plot_pareto_front(study, target_names=names)),
                                     height=520))
        else:
            parts.append(_note(f"a Pareto front plot needs 2 or 3 objectives; this study has {n_obj}"))

    parts = page.section("importance", "Param importances")
    varying = {name for name in {p for t in complete for p in t.params}
               if len({t.params.get(name) for t in complete}) > 1}
    if len(complete) < 2 or not varying:
        parts.append(_note(
            f"needs at least 2 completed trials whose params vary ({len(complete)} completed, "
            f"{len(varying)} varying params)"
        ))
    else:
        constant = sorted({p for t in complete for p in t.params} - varying)
        try:
            fig = _optuna_plot(lambda: vis.plot_param_importances(study, params=sorted(varying)))
            parts.append(page.figure(fig, height=380))
            if constant:
                parts.append(_note(f"left out: parameters that never varied ({', '.join(constant)}); "
                                   "a constant parameter explains nothing"))
        except Exception as exc:  # the importance evaluators fail on some tiny or degenerate studies
            logger.warning("param importances failed: %s", _brief(exc))
            parts.append(_note(f"param importances could not be computed: {_brief(exc)}"))

    parts = page.section("curves", "Learning curves")
    if n_obj == 1 and any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        parts.append(page.figure(_optuna_plot(lambda: vis.plot_intermediate_values(study)), height=440))
        parts.append(_note("validation fitness after every epoch of every child (pruned children end early)"))
    else:
        parts.append(_note("no per-epoch values stored (multi-objective studies have none)"))

    parts = page.section("parallel", "Parallel coordinate")
    if complete:
        if n_obj == 1:
            fig = _optuna_plot(lambda: vis.plot_parallel_coordinate(study, target_name=names[0]))
        else:
            fig = _optuna_plot(lambda: vis.plot_parallel_coordinate(
                study, target=lambda t: t.values[0], target_name=names[0]))
        parts.append(page.figure(fig, height=440))
    else:
        parts.append(_note("no completed trials yet"))

    parts = page.section("timeline", "Timeline")
    if study.get_trials(deepcopy=False):
        parts.append(page.figure(_optuna_plot(lambda: vis.plot_timeline(study)), height=420))
    else:
        parts.append(_note("no trials yet"))


def _population(page: _Page, study: optuna.Study) -> None:
    parts = page.section("population", "Final population")
    try:
        candidates = population(study)
    except (ValueError, GenomeError) as exc:
        parts.append(_note(f"no population: {exc}"))
        return
    if not candidates:
        parts.append(_note("no candidate has completed yet"))
        return
    names = _objective_names(study)
    parts.append(_table(
        ["slot", "trial", ", ".join(names), "clean acc", "adv acc", "generation", "parent", "parameters",
         "architecture"],
        [
            (i, f"#{t.number}", _values_text(t), _pct(t.user_attrs.get("clean_acc")),
             _pct(t.user_attrs.get("adv_acc")), _fmt(t.user_attrs.get(GENERATION_KEY)),
             _fmt(t.user_attrs.get(PARENT_KEY)), _fmt(t.user_attrs.get("params")), t.user_attrs.get(ARCH_KEY, ""))
            for i, t in enumerate(candidates)
        ],
        numeric=[True, True, True, True, True, True, True, True, False],
    ))
    cards = []
    for i, t in enumerate(candidates):
        heading = (
            f"slot {i} · trial #{t.number} · {', '.join(names)} {_values_text(t)} · clean "
            f"{_pct(t.user_attrs.get('clean_acc'))} · adv {_pct(t.user_attrs.get('adv_acc'))}"
        )
        genome = genome_of(t)
        fig, n_rows = _readable_architecture(plot_architecture(genome, title=""), genome)
        cards.append(
            f'<div class="card"><h3>{_esc(heading)}</h3><p class="caption"><code>{_esc(genome.summary())}'
            f"</code></p>{page.figure(fig, height=min(760, 200 + 70 * n_rows), top=20)}</div>"
        )
    parts.append("".join(cards))


def _readable_architecture(fig: go.Figure, genome: Genome) -> tuple[go.Figure, int]:
    """Make :func:`~gmsearch.plot_architecture`'s figure legible on a page; also count its node rows.

    Node labels alternate above/below by layer so long chains do not overlap. An edge whose
    straight line runs through another node (a skip connection into ``sum``/``concat`` along a
    chain) would be hidden behind the chain, so it is also drawn as an arc, alternately above and below.
    """
    position: dict[int, tuple[float, float]] = {}
    for trace in fig.data:
        if not (trace.mode and "text" in trace.mode and trace.x is not None):
            continue
        trace.textposition = ["top center" if int(x) % 2 == 0 else "bottom center" for x in trace.x]
        trace.textfont = {"size": 11}
        for x, y, label in zip(trace.x, trace.y, trace.text, strict=True):
            match = re.match(r"(\d+): ", str(label))
            if match or label == "input":
                position[int(match.group(1)) if match else -1] = (float(x), float(y))
    arcs = 0
    for i, block in enumerate(genome.blocks):
        for source in block.inputs:
            if source not in position or i not in position:
                continue
            (x0, y0), (x1, y1) = position[source], position[i]
            if not any(_strictly_between(p, (x0, y0), (x1, y1)) for p in position.values()):
                continue
            length = math.hypot(x1 - x0, y1 - y0)
            side = 1.0 if arcs % 2 == 0 else -1.0
            bulge = side * min(1.2, 0.5 + 0.15 * (length - 2.0))  # control offset: the arc peaks at half of it
            cx, cy = (x0 + x1) / 2 - bulge * (y1 - y0) / length, (y0 + y1) / 2 + bulge * (x1 - x0) / length
            fig.add_shape(type="path", path=f"M {x0},{y0} Q {cx},{cy} {x1},{y1}", xref="x", yref="y",
                          line={"color": "#7b8794", "width": 1.5}, layer="below")
            arcs += 1
    fig.update_layout(legend={"orientation": "h", "y": -0.02, "yanchor": "top", "x": 0, "title_text": ""})
    return fig, max(1, len({y for _, y in position.values()}))


def _strictly_between(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether point ``p`` lies on segment ``ab``, not at its ends."""
    (px, py), (ax, ay), (bx, by) = p, a, b
    cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    dot = (px - ax) * (bx - ax) + (py - ay) * (by - ay)
    return abs(cross) < 1e-9 and 1e-9 < dot < (bx - ax) ** 2 + (by - ay) ** 2 - 1e-9


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


def _lineage(page: _Page, study: optuna.Study) -> None:
    parts = page.section("lineage", "Lineage")
    try:
        rows = lineage(study)
    except (ValueError, GenomeError) as exc:
        parts.append(_note(f"no lineage: {exc}"))
        return
    if not rows:
        parts.append(_note(f"no trial carries a gmsearch genome (system attr {GENOME_KEY!r})"))
        return
    names = _objective_names(study)
    parts.append(page.figure(_lineage_figure(rows, names), height=480))
    cells = [
        (f"#{r['number']}", r["state"].lower(), r["generation"], _fmt(r["parent"]), _fmt(r["replaced"]),
         ", ".join(_fmt(v) for v in r["values"]) if r["values"] else "-", _pct(r["clean_acc"]), _pct(r["adv_acc"]),
         "yes" if r["in_population"] else "", r["fail_reason"] or r["architecture"] or "")
        for r in rows
    ]
    parts.append(
        f"<details open><summary>All {len(rows)} trials (final population highlighted)</summary>"
        + _table(
            ["trial", "state", "generation", "parent", "replaced", ", ".join(names), "clean acc", "adv acc",
             "in population", "architecture / failure"],
            cells, numeric=[True, False, True, True, True, True, True, True, False, False],
            highlight=lambda i: bool(rows[i]["in_population"]),
        )
        + "</details>"
    )


def _attributions(page: _Page, figures: Sequence[go.Figure], notes: Sequence[str]) -> None:
    parts = page.section("attributions", "Attribution maps")
    for note in notes:
        parts.append(_note(note))
    for fig in figures:
        height = fig.layout.height if fig.layout.height else 520
        parts.append(page.figure(go.Figure(fig), height=int(height)))


# --- public entry points -----------------------------------------------------------------------------


def render_report(
    study: optuna.Study,
    *,
    baseline_rows: Sequence[Row | Mapping[str, Any]] | None = None,
    baseline_title: str | None = None,
    attributions: go.Figure | Sequence[go.Figure] | None = None,
    artifact_store: FileSystemArtifactStore | None = None,
    title: str | None = None,
) -> str:
    """The report of ``study`` as one self-contained HTML document (see :func:`write_report`)."""
    page = _Page()
    _summary(page, study)

    stored = load_baseline(study)
    if baseline_rows is not None:
        rows = [_row_from(r) for r in baseline_rows]
        caption = baseline_title if baseline_title is not None else (stored[0] if stored else "")
    elif stored is not None:
        caption, rows = stored
        caption = baseline_title if baseline_title is not None else caption
    else:
        rows, caption = [], ""
    if rows:
        _baseline(page, caption, rows)

    _search_plots(page, study)
    _population(page, study)
    _lineage(page, study)

    if attributions is not None:
        figures = [attributions] if isinstance(attributions, go.Figure) else list(attributions)
        notes: list[str] = []
    else:
        figures, notes = _stored_attributions(study, artifact_store)
    if figures or notes:
        _attributions(page, figures, notes)

    n = len(study.get_trials(deepcopy=False))
    subtitle = f"{n} trials · objectives: {', '.join(_objective_names(study))}"
    return page.render(title or f"gmsearch report: {study.study_name}", subtitle)


def write_report(
    study: optuna.Study,
    path: str | Path,
    *,
    baseline_rows: Sequence[Row | Mapping[str, Any]] | None = None,
    attributions: go.Figure | Sequence[go.Figure] | None = None,
    artifact_store: FileSystemArtifactStore | str | Path | None = None,
    baseline_title: str | None = None,
    title: str | None = None,
) -> Path:
    """Write the report of ``study`` to ``path`` as one HTML file that needs no network to view.

    Args:
        study: Any Optuna study; the population and lineage sections need a
            :class:`~gmsearch.NicheEvolutionSampler` study.
        path: The HTML file to write (parent folders are created).
        baseline_rows: Ref / Ref+GM / NE+GM rows (:class:`~gmsearch.experiments.Row` or dicts);
            default: the table stored on the study by :func:`store_baseline`, if any.
        attributions: Attribution maps as one or more plotly figures; default: those stored
            with the study by :func:`store_attributions`, if any.
        artifact_store: The Optuna artifact store (or its directory) holding stored attribution maps.
        baseline_title: Caption of the baseline table (default: the stored one).
        title: Page title (default: ``gmsearch report: <study name>``).

    Returns:
        The path written.

    Example:
        >>> write_report(study, "report.html")
    """
    store: FileSystemArtifactStore | None
    if isinstance(artifact_store, str | Path):
        if not Path(artifact_store).is_dir():
            raise FileNotFoundError(f"artifact store directory {str(artifact_store)!r} does not exist")
        store = FileSystemArtifactStore(str(artifact_store))
    else:
        store = artifact_store
    text = render_report(
        study, baseline_rows=baseline_rows, baseline_title=baseline_title, attributions=attributions,
        artifact_store=store, title=title,
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
