"""``gmsearch quickstart``: the whole method on the embedded digits, on a laptop CPU.

Loads scikit-learn's real handwritten digits (16x16, grey), trains the
paper's hand-engineered reference ``hand_a`` (cached), makes L-inf PGD
adversarial validation/test sets from it (cached), evolves a population of 4
with 2 children per candidate for a few generations with GM training, then
prints the baseline table on the test split and writes Optuna's optimization
history and the full report (``gmsearch report``, with the table stored on the
study) as HTML. The study lives in SQLite in the working directory; running
again resumes it and adds more generations.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from gmsearch import config, pipeline
from gmsearch.report._html import write_report
from gmsearch.report.stored import store_baseline
from gmsearch.runner import optimize_until_finished
from gmsearch.search.baselines import Row, evolved_rows, format_table, reference_gm_row, reference_row
from gmsearch.search.sampler import n_trials_for
from gmsearch.training.loop import numerics

logger = logging.getLogger(__name__)


@dataclass
class QuickstartResult:
    rows: list[Row]
    table: str
    study: optuna.Study
    seconds: float
    history_html: Path
    report_html: Path | None = None


def run_quickstart(
    *,
    workdir: str | Path = ".",
    generations: int = 3,
    population_size: int = 4,
    n_children: int = 2,
    epochs: int = 8,
    reference_epochs: int = 30,
    lam: float = 1.0,
    seed: int = 0,
    device: str | None = None,
    study_name: str = "quickstart",
    cache_dir: str | Path | None = None,
    image_size: int = 16,
    max_params: int = 200_000,
    attack_steps: int = 10,
    show_progress_bar: bool = True,
) -> QuickstartResult:
    """Run (or resume) the quickstart study and return its baseline table.

    Each call adds ``generations`` generations to the stored study.
    """
    start = time.perf_counter()
    work = Path(workdir)
    cache = Path(cache_dir) if cache_dir is not None else work / ".gmsearch_cache"
    cfg = config.parse({  # the preset; every other value is config.py's default
        "seed": seed, "device": device or "auto",
        "data": {"name": "digits", "image_size": image_size},
        "reference": {"name": "hand_a", "epochs": reference_epochs},
        "attack": {"name": "pgd_linf", "params": {"steps": attack_steps}},
        "training": {"lam": lam},
        "search": {
            "population_size": population_size, "n_children": n_children, "generations": generations,
            "epochs": epochs, "max_blocks": 12, "max_params": max_params,
        },
        "study": {
            "name": study_name, "storage": f"sqlite:///{(work / 'gmsearch_quickstart.db').resolve()}",
            "artifacts": str(work / "gmsearch_artifacts"), "cache_dir": str(cache),
        },
    })
    pipeline.check_device(pipeline.device_for(cfg))  # before the work folder is made
    work.mkdir(parents=True, exist_ok=True)
    pipeline.check(cfg)
    dev = pipeline.device_for(cfg)
    print(f"[1/5] loading scikit-learn digits ({image_size}x{image_size}, grey)")
    data = pipeline.load_data(cfg, device=dev)
    print(f"      train {len(data.train)} / val {len(data.val)} / test {len(data.test)} images")
    print(f"[2/5] reference hand_a ({reference_epochs} epochs, cached in {cache})")
    ref = pipeline.make_reference(cfg, data, device=dev, echo=lambda line: print(f"      {line}", flush=True))
    print("[3/5] adversarial sets and reference gradients (cached)")
    objective = pipeline.make_objective(cfg, data, ref, device=dev)
    sampler = pipeline.make_sampler(cfg, data)
    study = pipeline.make_study(cfg, sampler, objective)
    live = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    done_generations = max(0, (len(live) - population_size) // (population_size * n_children))
    sampler.generations = done_generations + generations  # each run adds `generations`
    n_trials = max(n_trials_for(sampler.generations, population_size, n_children) - len(live), 0)
    print(
        f"[4/5] evolving: population {population_size} x {n_children} children, generations "
        f"{done_generations + 1}..{done_generations + generations} ({n_trials} trials; {len(live)} stored)"
    )
    # the progress bar shows progress; per-trial and per-epoch lines would break it
    verbosity = optuna.logging.get_verbosity()
    if show_progress_bar:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logging.getLogger("gmsearch").setLevel(logging.WARNING)
    try:
        optimize_until_finished(study, objective, show_progress_bar=show_progress_bar)
    finally:
        optuna.logging.set_verbosity(verbosity)

    print("[5/5] test-split table")
    best_epochs = max(
        (int(t.user_attrs.get("epochs", epochs)) for t in study.get_trials(deepcopy=False) if t.values),
        default=epochs,
    )
    rows = [reference_row(objective), reference_gm_row(objective, epochs=best_epochs, seed=seed + 1)]
    rows += evolved_rows(study, objective, top=1)
    title = (
        f"digits test split ({len(data.test)} images); adversarial examples transferred from the "
        f"reference by {objective.attack.describe()}\nseed {seed}; {numerics(dev)} (another thread count, device "
        "or torch build trains other networks: other numbers)"
    )
    table = format_table(rows, title=title)
    history = work / "gmsearch_quickstart_history.html"
    optuna.visualization.plot_optimization_history(study).write_html(str(history), include_plotlyjs=True)
    store_baseline(study, rows, title=title)  # `gmsearch report` shows it later too
    report_html = write_report(
        study, work / "gmsearch_quickstart_report.html", artifact_store=objective.artifact_store
    )
    seconds = time.perf_counter() - start
    print(table)
    print(f"optimization history: {history}")
    print(f"full report: {report_html}")
    print(f"study: {study.study_name} in {work / 'gmsearch_quickstart.db'} ({len(study.trials)} trials)")
    print(f"done in {seconds:.0f} s")
    return QuickstartResult(rows=rows, table=table, study=study, seconds=seconds, history_html=history,
                            report_html=report_html)
