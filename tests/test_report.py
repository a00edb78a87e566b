"""The HTML report: sections, escaping, offline rendering in headless Chromium, and ``gmsearch report``.

Studies here use a synthetic fitness computed from the genome's spectrum (no training).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import plotly.graph_objects as go
import pytest
from optuna.artifacts import FileSystemArtifactStore

import gmsearch as gms
from gmsearch import cli, report
from gmsearch.report import _html
from gmsearch.search.baselines import Row
from gmsearch.search.schema import ATTRIBUTIONS_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)

HOSTILE = '<script>alert("x")</script>'
ROWS = [
    Row("Ref", 0.98, 0.02, None, "white-box"),
    Row("Ref+GM", 0.96, 0.81, 0.12, "8 epochs"),
    Row("NE+GM", 0.95, 0.90, 0.05, HOSTILE),
]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]


def synthetic_objective(trial: optuna.Trial) -> float:
    n_conv, n_pool, n_sconv, n_sum, n_concat = gms.genome_of(trial).spectrum()
    fitness = -abs(n_conv - 6) - 0.5 * abs(n_sum - 2) + 0.25 * n_pool - 0.1 * n_sconv + 0.05 * n_concat
    clean = 1.0 / (1.0 + math.exp(-(fitness + 3.0)))
    trial.set_user_attr("clean_acc", clean)
    trial.set_user_attr("adv_acc", 0.8 * clean)
    return fitness


def make_study(name: str, storage: str | None = None, *, size: int = 3, children: int = 2, generations: int = 3,
               seed: int = 7) -> optuna.Study:
    sampler = gms.NicheEvolutionSampler(population_size=size, n_children=children, min_distance=3.0, seed=seed)
    study = gms.create_study(study_name=name, storage=storage, sampler=sampler)
    study.optimize(synthetic_objective, n_trials=gms.n_trials_for(generations, size, children))
    return study


def attribution_figure() -> go.Figure:
    fig = go.Figure(go.Heatmap(z=[[0.0, 0.5], [1.0, 0.25]], name=HOSTILE, colorscale="RdBu"))
    fig.update_layout(title="attribution maps", height=300)
    return fig


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    return make_study("report</b>")


@pytest.fixture(scope="module")
def html_path(study: optuna.Study, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    written = report.write_report(study, path, baseline_rows=ROWS, attributions=attribution_figure())
    assert written == path
    return path


def section_ids(text: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', text)


def test_sections_escaping_and_no_network(study: optuna.Study, html_path: Path) -> None:
    text = html_path.read_text(encoding="utf-8")
    assert section_ids(text) == [
        "summary", "baseline", "history", "importance", "curves", "parallel", "timeline", "population", "lineage",
        "attributions",
    ]
    # self-contained: plotly.js inline exactly once, nothing fetched from the network
    assert text.count("plotly.js v") >= 1 and text.count('<script type="text/javascript">/**') == 1
    assert not re.search(r"<script[^>]*\bsrc\s*=", text)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", text)
    # one figure per plot: baseline bars, history, importances, parallel, timeline, one per candidate,
    # lineage, attributions
    n_candidates = len(gms.population(study))
    assert text.count("Plotly.newPlot(") == 7 + n_candidates
    assert text.count('<div class="card">') == n_candidates
    # every candidate is shown with its fitness and accuracies
    for trial in gms.population(study):
        assert f"trial #{trial.number} · fitness" in text
    # user text is escaped in HTML and in figure JSON
    assert HOSTILE not in text and "report</b>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text and "report&lt;/b&gt;" in text
    for row in ROWS[:2]:
        assert f"<td>{row.name}</td>" in text
    assert "81.00%" in text and "90.00%" in text
    # the sampler's settings are a small table, not a dict dump
    assert "<h3>Sampler</h3>" in text and "<td>population_size</td>" in text and "{'population_size'" not in text
    # the lineage table lists every trial; final-population rows are highlighted
    assert text.count('<tr class="highlight">') == n_candidates
    assert all(f"<td class=\"num\">#{t.number}</td>" in text for t in study.trials)


def test_stored_baseline_and_attributions(tmp_path: Path) -> None:
    study = make_study("stored", size=2, children=1, generations=2)
    assert report.load_baseline(study) is None
    report.store_baseline(study, ROWS, title="digits test split, PGD eps=0.2")
    title, rows = report.load_baseline(study) or ("", [])
    assert title == "digits test split, PGD eps=0.2" and rows == ROWS
    report.store_attributions(study, attribution_figure())
    text = report.render_report(study)
    assert {"baseline", "attributions"} <= set(section_ids(text))
    assert "digits test split, PGD eps=0.2" in text and "<td>Ref+GM</td>" in text

    # large maps go to the artifact store; the report needs the store to include them
    other = make_study("artifacts", size=2, children=1, generations=1)
    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    report.store_attributions(other, attribution_figure(), artifact_store=FileSystemArtifactStore(str(store_dir)))
    without = report.render_report(other)
    assert "pass the artifact store" in without and "attributions" in section_ids(without)
    path = report.write_report(other, tmp_path / "a.html", artifact_store=store_dir)
    with_store = path.read_text(encoding="utf-8")
    assert "pass the artifact store" not in with_store
    assert with_store.count("Plotly.newPlot(") == without.count("Plotly.newPlot(") + 1
    assert "attribution maps" in with_store  # the stored figure's title
    other.set_user_attr(ATTRIBUTIONS_KEY, "not a figure")
    assert "is not a plotly figure" in report.render_report(other)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.write_report(other, tmp_path / "b.html", artifact_store=tmp_path / "missing")
    with pytest.raises(ValueError, match="bad baseline row"):
        report.write_report(other, tmp_path / "c.html", baseline_rows=[{"name": "Ref"}])


def test_small_and_foreign_studies_get_notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = gms.create_study(study_name="empty", storage=None)
    text = report.render_report(empty)
    assert "no completed trials yet" in text and "Plotly.newPlot(" not in text

    one = make_study("one", size=1, children=1, generations=0)
    assert "needs at least 2 completed trials" in report.render_report(one)

    plain = optuna.create_study(direction="maximize")  # no gmsearch sampler: Optuna's plots only
    plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=4)
    text = report.render_report(plain)
    assert "no population" in text and "no trial carries a gmsearch genome" in text
    assert {"history", "importance", "parallel", "timeline"} <= set(section_ids(text))

    def broken(*args: object, **kwargs: object) -> go.Figure:
        raise RuntimeError("evaluator failed")

    monkeypatch.setattr(optuna.visualization, "plot_param_importances", broken)
    assert "param importances could not be computed: RuntimeError: evaluator failed" in report.render_report(plain)


def test_two_objectives_show_a_pareto_front() -> None:
    def two(trial: optuna.Trial) -> tuple[float, float]:
        clean = synthetic_objective(trial)
        return clean, -float(gms.genome_of(trial).spectrum()[0])

    sampler = gms.NicheEvolutionSampler(population_size=2, n_children=1, min_distance=2.0, seed=3)
    study = gms.create_study(study_name="pareto", storage=None, sampler=sampler, directions=["maximize"] * 2)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["min_clean_adv", "neg_convs"])
    study.optimize(two, n_trials=6)
    ids = section_ids(report.render_report(study))
    assert "pareto" in ids and "history" not in ids and "population" in ids


def test_skip_connections_along_a_chain_are_drawn_as_arcs() -> None:
    conv = {"out_channels": 8, "kernel_size": 3}
    genome = gms.Genome(blocks=(
        gms.Block("conv", (-1,), **conv), gms.Block("conv", (0,), **conv), gms.Block("sum", (1, -1)),
    ))
    fig, rows = _html._readable_architecture(gms.plot_architecture(genome), genome)
    assert rows == 1  # one chain: the image -> conv -> conv -> sum edge would hide behind it
    assert [shape.type for shape in fig.layout.shapes] == ["path"]
    assert fig.layout.shapes[0].path.startswith("M 0.0,0.0 Q")


def run_chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess[str]:
    chromium = shutil.which("chromium")
    assert chromium is not None
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={user_dir}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (apt-get install -y chromium); .ci/run installs it",
)
def test_renders_offline_in_headless_chromium(study: optuna.Study, html_path: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    run = run_chromium(
        "--dump-dom", f"--screenshot={shot}", "--window-size=1400,3000", html_path.resolve().as_uri(),
        user_dir=tmp_path / "profile",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    # plotly.js ran from the inline copy: every figure became a plot with its SVG layers
    n_figures = 7 + len(gms.population(study))
    assert run.stdout.count('class="plot-container plotly"') == n_figures
    assert run.stdout.count('class="main-svg"') >= 2 * n_figures

    assert shot.is_file() and shot.stat().st_size > 50_000, run.stderr[-2000:]
    pil = pytest.importorskip("PIL.Image", reason="Pillow is needed to inspect the screenshot")
    with pil.open(shot) as image:
        assert image.size == (1400, 3000)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 200  # text, plots and colour scales, not a blank page


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'studies.db'}"
    make_study("cli", url, size=2, children=1, generations=1)
    gms.create_study(study_name="second", storage=url)
    return url


def test_cli_report(sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.html"
    assert cli.main(["report", "--storage", sqlite_url, "--study", "cli", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    assert {"summary", "history", "population", "lineage"} <= set(section_ids(text))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--study", "nope"], "no study named 'nope' in storage sqlite:///.*available studies: 'cli', 'second'"),
        ([], "holds 2 studies; choose one with --study: 'cli', 'second'"),
        (["--study", "cli", "--artifacts", "/nonexistent/artifacts"], "artifact store directory"),
    ],
)
def test_cli_report_errors(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "x.html"
    assert cli.main(["report", "--storage", sqlite_url, "--out", str(out), *args]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_cli_report_missing_database_is_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "missing.db"
    assert cli.main(["report", "--storage", f"sqlite:///{db}", "--study", "x", "--out", str(tmp_path / "r.html")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not db.exists()


def test_importances_leave_out_constant_params() -> None:
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + 0 * t.suggest_int("fixed", 3, 3), n_trials=6)
    text = report.render_report(study)
    assert "left out: parameters that never varied (fixed)" in text
