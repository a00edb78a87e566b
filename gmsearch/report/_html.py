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
- the transfer matrix ``gmsearch evaluate`` stored (:data:`~gmsearch.search.schema.TRANSFER_KEY`), as a heat map;
- a ``gmsearch compare`` result (:data:`~gmsearch.search.schema.COMPARE_KEY`, on the study
  ``<study>-compare``): the per-way table, niche against each other way, and best-so-far validation
  fitness against child-epochs per way (mean and the seeds' range);
- attribution maps, passed in as plotly figures or stored on the study
  (:func:`store_attributions`: a study user attr, or an Optuna artifact).

Example:
    >>> import gmsearch as gms
    >>> study = gms.load_study(study_name="quickstart", storage="sqlite:///gmsearch_quickstart.db")
    >>> gms.report.write_report(study, "report.html")
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial, TrialState

from gmsearch.nets.genome import Genome, GenomeError
from gmsearch.report._lineage import _lineage_figure
from gmsearch.report._page import _brief, _esc, _fmt, _key_values, _note, _Page, _pct, _table
from gmsearch.report.plotting import plot_architecture, plot_budget_curves, plot_transfer_matrix
from gmsearch.report.stored import _row_from, _stored_attributions, load_baseline
from gmsearch.search import schema
from gmsearch.search._optuna_private import storage_of, study_id_of
from gmsearch.search.baselines import Row
from gmsearch.search.schema import (
    ARCH_KEY,
    ATTACK_KEY,
    GENERATION_KEY,
    GENOME_KEY,
    PARENT_KEY,
    SAMPLER_KEY,
    genome_of,
)
from gmsearch.search.selection import lineage, population

logger = logging.getLogger(__name__)


# --- opening a study by URL and name --------------------------------------------------------------


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
    config = storage_of(study).get_study_system_attrs(study_id_of(study)).get(SAMPLER_KEY)
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


def _transfer(page: _Page, study: optuna.Study) -> None:
    from gmsearch.report.evaluate import load_transfer  # torch: only for a study that has a matrix

    if schema.TRANSFER_KEY not in study.user_attrs:
        return
    matrix = load_transfer(study)
    if matrix is None:
        return
    parts = page.section("transfer", "Transfer matrix")
    parts.append(_note("gmsearch evaluate: accuracy on adversarial sets made from each source with each attack; "
                       "white-box is the network's own PGD (GM is a transfer defense, not a white-box one)"))
    parts.append(page.figure(plot_transfer_matrix(matrix), height=160 + 40 * len(matrix.networks)))


def _comparison(page: _Page, study: optuna.Study) -> None:
    result = study.user_attrs.get(schema.COMPARE_KEY)
    if not isinstance(result, dict) or "summary" not in result:
        return
    parts = page.section("compare", "Ways at equal budget")
    parts.append(_note(
        f"gmsearch compare: {len(result['seeds'])} seed(s), {result['budget']} child-epochs per way; each way's best "
        f"candidate by validation fitness retrained {result['repeats']}x from scratch and scored on the test split"
        + (" (a --quick smoke run)" if result.get("quick") else "")
    ))

    def pm(pair: Sequence[float | None], percent: bool = True) -> str:
        mean, sd = pair
        scale = 100.0 if percent else 1.0
        return "-" if mean is None else f"{scale * mean:.2f}" + ("" if sd is None else f" ± {scale * sd:.2f}")

    rows = []
    for way, row in result["summary"].items():
        rows.append((way, pm(row["clean"]), pm(row["adv"]), pm(row["fitness"]),
                     pm(row["child_epochs"], False) if "child_epochs" in row else "fixed",
                     pm(row["seconds"], False) if "seconds" in row else "-"))
    parts.append(_table(["way", "clean (%)", "adv (%)", "fitness (×100)", "child-epochs", "seconds"], rows,
                        numeric=[False, True, True, True, True, True]))
    stats = result.get("stats") or {}
    base = result.get("base", "niche")  # results stored before --base compared niche
    if stats:
        cells = []
        for way, by_metric in stats.items():
            for metric, st in by_metric.items():
                low = "n/a" if st["lower95"] is None else f"{100 * st['lower95']:+.2f}"
                wins = f"{st['wins']}/{st['n']}"
                cells.append((f"{base} − {way}", metric, f"{100 * st['mean_diff']:+.2f}", low, wins))
        parts.append(f"<h3>{_esc(base)} against each way (paired over seeds, ×100)</h3>" + _table(
            ["pair", "metric", "mean difference", "one-sided 95% lower bound", "seeds ahead"], cells,
            numeric=[False, False, True, True, True],
        ))
    parts.append(page.figure(plot_budget_curves(result["curves"]), height=420))


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

    _comparison(page, study)  # near the top: the study <study>-compare holds it and no trials
    _search_plots(page, study)
    _population(page, study)
    _lineage(page, study)
    _transfer(page, study)

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
