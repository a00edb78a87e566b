"""``gmsearch compare``: ways of spending the budget (samplers) at equal child-epochs, winners retrained.

For each seed one data split, reference and adversarial sets are shared by
every way. Each way runs its own study (``<study>-<way>-s<seed>``, in the
configured storage) until it has spent the budget: the child-epochs of its
finished trials (a completed trial counts the epochs it trained, a pruned one
the epochs it reported) reach the niche search's planned child-epochs (or the
given budget). Its best candidate by validation fitness (the completed trial
with the highest value, averaged over its re-evaluations where the way made
any) is then retrained from scratch ``repeats`` times under
fresh seeds for the same epochs and scored on the test split, so no selection
luck of one training run carries into the result. Ref (white-box) and HE+GM
(``hand_b`` trained with GM ``repeats`` times for the last generation's epochs)
are fixed rows of each seed.

A finished way/seed is reused: its search stops at the budget and its test
numbers are stored on its study (the fixed rows on the comparison's study). The whole result (per way and seed, the
best-so-far curves, the paired statistics of the base way, niche unless ``base`` says otherwise, against each
other way) is stored on the study ``<study>-compare`` under :data:`~gmsearch.search.schema.COMPARE_KEY`,
which ``gmsearch report`` draws.

(It lives in :mod:`gmsearch.evaluation`, not at ``gmsearch/compare.py``: importing a submodule
``gmsearch.compare`` would replace the function ``gms.compare`` by the module.)

Example:
    >>> import gmsearch as gms
    >>> result = gms.compare("study.toml", ways=["niche", "random"], seeds=[0, 1, 2])
    >>> from gmsearch.evaluation.compare import compare_lines
    >>> print("\\n".join(compare_lines(result)))
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from gmsearch import config as config_module
from gmsearch import interrupt, pipeline, runner
from gmsearch.config import RunConfig
from gmsearch.errors import UsageError
from gmsearch.evaluation.compare_stats import (  # noqa: F401  (re-exported: the comparison's numbers)
    BASE_WAY,
    FIXED_ROWS,
    METRICS,
    band,
    compare_lines,
    epochs_to_reach,
    margins_summary,
    mean_sd,
    paired_stats,
    summarize,
)
from gmsearch.evaluation.metrics import accuracy
from gmsearch.evaluation.ways import (  # noqa: F401  (re-exported: the way specs of a comparison)
    WAY_SECTIONS,
    objective_key,
    parse_seeds,
    parse_ways,
    quick_config,
    split_way,
    way_config,
    way_label,
)
from gmsearch.nets.genome import Genome
from gmsearch.search import samplers, schema
from gmsearch.search.baselines import _row, train_with_gm
from gmsearch.search.objective import GMObjective
from gmsearch.search.pruners import NichePruner, learning_curves, would_prune_at
from gmsearch.search.samplers import EpochSchedule, n_trials_for
from gmsearch.search.samplers._base import niche_generation
from gmsearch.search.selection import fitness_estimates
from gmsearch.search.study import create_study

logger = logging.getLogger(__name__)

#: The ways compared by default.
DEFAULT_WAYS = ("niche", "random", "regularized", "restarts")


# --- budget and curves ----------------------------------------------------------------------------------------


def planned_child_epochs(generations: int, population_size: int, n_children: int, schedule: EpochSchedule) -> int:
    """Epochs Algorithm 1's trials of ``generations`` generations train together (its planned budget)."""
    total = n_trials_for(generations, population_size, n_children)
    return sum(schedule.epochs(niche_generation(i, population_size, n_children)) for i in range(total))


def trained_epochs(trial: FrozenTrial) -> int:
    """Epochs a finished trial trained: a completed one its ``epochs`` result, a pruned one the epochs it
    reported before it stopped; other states 0."""
    if trial.state == TrialState.COMPLETE:
        return int(trial.user_attrs.get("epochs", trial.user_attrs.get(schema.EPOCHS_KEY, 0)))
    if trial.state == TrialState.PRUNED:
        return len(trial.intermediate_values)
    return 0


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    done = [t for t in trials if schema.GENOME_KEY in t.system_attrs and t.datetime_complete is not None]
    return sorted(done, key=lambda t: (t.datetime_complete, t.number))


def child_epochs(study: optuna.Study) -> int:
    """The budget a study has spent: epochs of its completed and pruned trials."""
    return sum(trained_epochs(t) for t in _finished(study))


def best_so_far(study: optuna.Study) -> list[list[float]]:
    """``[child-epochs, best validation fitness so far]`` after each finished trial, in order of finishing
    (the first value for two objectives; nothing until a trial completed)."""
    points, spent, best = [], 0, -math.inf
    for trial in _finished(study):
        spent += trained_epochs(trial)
        if trial.state == TrialState.COMPLETE and trial.values and math.isfinite(trial.values[0]):
            best = max(best, trial.values[0])
        if best > -math.inf:
            points.append([float(spent), best])
    return points


def derived_seed(seed: int, way: str, repeat: int) -> int:
    """The training seed of retraining ``repeat`` of ``way``'s winner under ``seed`` (stable across runs)."""
    digest = hashlib.sha256(f"gmsearch-compare:{seed}:{way}:{repeat}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


# --- one way, one seed ----------------------------------------------------------------------------------------


class _BudgetSpent(Exception):
    """Raised by the callback once the study has spent its budget (the trial that did it is stored)."""


def search(cfg: RunConfig, objective: GMObjective, data: Any, budget: int) -> optuna.Study:
    """Run (or resume) one way's study until its finished trials have spent ``budget`` child-epochs.

    It runs the generations whose plan reaches the budget; when pruned trials spent less, one more generation
    is allowed at a time, and the search stops after the trial that reaches the budget (at most one trial's
    epochs over it).
    """
    sampler = pipeline.make_sampler(cfg, data)
    study = pipeline.make_study(cfg, sampler, objective)
    s = cfg.search
    schedule = EpochSchedule(base=s.epochs, step=s.epochs_step, every=s.epochs_every)
    generations = 1
    while planned_child_epochs(generations, s.population_size, s.n_children, schedule) < budget:
        generations += 1

    def stop_at_budget(study: optuna.Study, trial: FrozenTrial) -> None:
        if child_epochs(study) >= budget:
            raise _BudgetSpent

    while child_epochs(study) < budget:
        sampler.generations = max(generations, sampler.generations or 0)
        try:
            finished = runner.optimize_until_finished(study, objective, callbacks=[stop_at_budget])
        except _BudgetSpent:
            break
        if not finished:
            raise RuntimeError(f"study {study.study_name!r} stopped before its budget: {runner.trial_summary(study)}")
        generations += 1
    return study


def replacement_margins(study: optuna.Study) -> list[float]:
    """For each child that replaced a candidate (``gmsearch:replaced``): its fitness minus the replaced one's
    (first value; empty for ways that replace nothing)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    by_number = {t.number: t for t in trials}
    margins = []
    for t in trials:
        replaced = by_number.get(t.user_attrs.get(schema.REPLACED_KEY))  # type: ignore[arg-type]
        if replaced is not None and t.values and replaced.values:
            margins.append(float(t.values[0] - replaced.values[0]))
    return margins


def prune_replay(study: optuna.Study) -> dict[str, int]:
    """:class:`~gmsearch.NichePruner`'s rule at its defaults replayed on a niche search's learning curves (each
    child against its rival, as :func:`~gmsearch.search.pruners.learning_curves` finds it): of its ``children``
    (re-evaluations not counted) and their ``child_epochs``, how many it would have ``stopped``, the epochs that
    would have ``saved``, and how many of the ``replacements`` it would have ``missed`` (stopped children that
    replaced their rival)."""
    rule = NichePruner()
    again = {t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get(schema.REEVALUATES_KEY) is not None}
    out = dict.fromkeys(("children", "child_epochs", "stopped", "saved", "replacements", "missed"), 0)
    for row in learning_curves(study):
        if row["number"] in again:
            continue
        epochs = len(row["curve"])
        stop = would_prune_at(row, warmup=rule.warmup, margin=rule.margin,
                              maximize=study.directions[0] == optuna.study.StudyDirection.MAXIMIZE)
        out["children"] += 1
        out["child_epochs"] += epochs
        out["replacements"] += bool(row["replaced"])
        if stop is not None:
            out["stopped"] += 1
            out["saved"] += max(epochs - stop, 0)
            out["missed"] += bool(row["replaced"])
    return out


def _prune_replay_of(way: str, study: optuna.Study) -> dict[str, int] | None:
    return prune_replay(study) if split_way(way)[0] == "niche" else None  # the pruner's rival: Algorithm 1's


def winner(study: optuna.Study) -> tuple[FrozenTrial, float]:
    """The completed trial with the highest validation fitness (first value for two objectives), and that
    fitness: its mean over its evaluations where a way re-evaluated it (:func:`fitness_estimates`)."""
    trials = study.get_trials(deepcopy=False)
    estimates = {n: v[0] for n, v in fitness_estimates(trials).items() if math.isfinite(v[0])}
    if not estimates:
        raise RuntimeError(f"study {study.study_name!r} has no completed trial with a finite fitness")
    number = max(estimates, key=lambda n: (estimates[n], -n))
    return next(t for t in trials if t.number == number), estimates[number]


def _fitness(objective: GMObjective, clean: float, adv: float) -> float:
    value = objective.fitness(clean, adv)
    return float(value[0] if isinstance(value, tuple | list) else value)


def _test_scores(name: str, net: torch.nn.Module, objective: GMObjective) -> dict[str, float]:
    row = _row(name, net, objective)
    return {"clean": row.clean_acc, "adv": row.adv_acc, "fitness": _fitness(objective, row.clean_acc, row.adv_acc)}


def _val_fitness(net: torch.nn.Module, objective: GMObjective) -> float:
    """The validation fitness the search would have stored for ``net`` (clean and transferred val sets)."""
    val = objective.data.val
    clean = accuracy(net, val.x, val.y)
    adv = accuracy(net, objective.adversarial_val.x, objective.adversarial_val.y)
    return _fitness(objective, clean, adv)


def _mean_scores(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    return {m: statistics.fmean(r[m] for r in runs) for m in METRICS}


def retrain(objective: GMObjective, genome: Genome, *, epochs: int, seed: int, way: str,
            repeats: int) -> list[dict[str, float]]:
    """``genome`` trained from scratch ``repeats`` times with GM (seeds from ``(seed, way, r)``), scored on test
    (``clean``, ``adv``, ``fitness``) and on validation (``val_fitness``: the search's measure, so its spread
    over the repeats is the fitness noise a replacement decides on)."""
    runs = []
    for r in range(repeats):
        interrupt.check()
        run_seed = derived_seed(seed, way, r)
        torch.manual_seed(run_seed)
        net = objective.build(genome).to(objective.device)
        train_with_gm(net, objective, epochs=epochs, seed=run_seed)
        runs.append({**_test_scores(way, net, objective), "val_fitness": _val_fitness(net, objective)})
    return runs


def run_way(cfg: RunConfig, objective: GMObjective, data: Any, *, way: str, seed: int, budget: int,
            repeats: int, retrain_epochs: int | None = None) -> dict[str, Any]:
    """One way under one seed: its search (or the stored one), its winner retrained and scored on test.

    The result is stored on the way's study (:data:`~gmsearch.search.schema.COMPARE_RUN_KEY`) and reused
    when the budget, the winner and ``repeats`` are unchanged.
    """
    wcfg = way_config(cfg, way, seed)
    pipeline.check_resume(wcfg)
    study = search(wcfg, objective, data, budget)
    best, best_fitness = winner(study)
    epochs = retrain_epochs or trained_epochs(best)
    stored = study.user_attrs.get(schema.COMPARE_RUN_KEY)
    if isinstance(stored, dict) and stored.get("budget") == budget and stored.get("winner") == best.number \
            and stored.get("repeats") == repeats and stored.get("retrain_epochs") == epochs and "lucky_gap" in stored:
        # read from the trials, never stale
        return {**stored, "margins": replacement_margins(study), "prune_replay": _prune_replay_of(way, study)}
    start = time.perf_counter()
    runs = retrain(objective, schema.genome_of(best), epochs=epochs, seed=seed, way=way, repeats=repeats)
    finished = _finished(study)
    val_retrained = statistics.fmean(r["val_fitness"] for r in runs)
    result: dict[str, Any] = {
        "way": way, "seed": seed, "study": study.study_name, "budget": budget, "repeats": repeats,
        "winner": best.number, "winner_epochs": trained_epochs(best), "retrain_epochs": epochs,
        "val_fitness": best_fitness,
        "child_epochs": child_epochs(study), "trials": len(finished),
        "search_seconds": round(sum((t.datetime_complete - t.datetime_start).total_seconds()
                                    for t in finished if t.datetime_start and t.datetime_complete), 3),
        "retrain_seconds": round(time.perf_counter() - start, 3),
        "test": _mean_scores(runs), "runs": runs, "curve": best_so_far(study),
        # the winner's luck (lucky_gap): its stored validation fitness minus what retraining it gives on the same images
        # (retrained for as long as it trained in the search; with retrain_epochs another length is measured)
        "val_retrained": val_retrained, "lucky_gap": best_fitness - val_retrained,
        "val_noise_sd": statistics.stdev([r["val_fitness"] for r in runs]) if repeats > 1 else None,
        "margins": replacement_margins(study), "prune_replay": _prune_replay_of(way, study),
    }
    study.set_user_attr(schema.COMPARE_RUN_KEY, result)
    return result


def fixed_rows(cfg: RunConfig, objective: GMObjective, *, seed: int, epochs: int, repeats: int) -> dict[str, Any]:
    """Ref (white-box, as it is) and HE+GM (``hand_b`` trained with GM ``repeats`` times) on test."""
    from gmsearch.nets import zoo

    rows: dict[str, Any] = {"Ref": _test_scores("Ref", objective.reference, objective)}  # its own attack
    runs = retrain(objective, zoo.genome("hand_b"), epochs=epochs, seed=seed, way="HE+GM", repeats=repeats)
    rows["HE+GM"] = _mean_scores(runs)
    return rows


# --- the comparison -------------------------------------------------------------------------------------------


def compare(
    config: RunConfig | str | Path,
    *,
    ways: Sequence[str] = DEFAULT_WAYS,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    repeats: int = 3,
    budget: int | None = None,
    quick: bool = False,
    retrain_epochs: int | None = None,
    base: str = BASE_WAY,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compare ways of spending the budget at equal child-epochs; the JSON-safe result (also stored).

    Args:
        config: A :class:`~gmsearch.config.RunConfig` or the path of its TOML file.
        ways: Sampler names (``gmsearch plugins`` lists them), each with optional sampler params in brackets
            (``niche[immigrants=0.5]``: a variant, its own studies) and settings of :data:`WAY_SECTIONS` as
            dotted keys (``niche[fitness.last_epochs=3]``, ``niche[search.pruner="niche"]``); niche is compared
            with each other way.
        seeds: One data split, reference and adversarial sets per seed; the ways are paired by seed.
        repeats: Fresh initialisations each winner (and HE+GM) is retrained with.
        budget: Child-epochs each way spends (default: the niche search's planned child-epochs).
        quick: A smoke run (:func:`quick_config`).
        retrain_epochs: Epochs each winner and HE+GM are retrained for (default: the epochs the winner trained
            in its search; HE+GM the last generation's).
        base: The way compared with each other way (paired statistics, anytime figure); one of ``ways``
            (e.g. ``niche[immigrants=0.5]`` to ask whether a variant beats random search).
        echo: Gets a line per finished way/seed (e.g. ``print``).

    Returns:
        ``{"ways", "seeds", "budget", "repeats", "quick", "study" (where it is stored), "runs": {way: {seed:
        ...}}, "fixed": {seed: ...}, "summary": {way: {metric: [mean, sd]}}, "stats": {way: {metric:
        paired_stats}}, "curves": {way: band}}``.
    """
    cfg = config_module.load(config) if isinstance(config, str | Path) else copy.deepcopy(config)
    cfg = quick_config(cfg) if quick else cfg
    ways, seeds = list(dict.fromkeys(ways)), list(seeds)
    unknown = [w for w in ways if split_way(w)[0] not in samplers.names()]
    if unknown or not ways:
        raise UsageError(f"--ways {','.join(ways)}: unknown {unknown}; choose from {', '.join(samplers.names())}")
    if base not in ways:
        raise UsageError(f"--base {base}: not one of the ways; choose from {', '.join(ways)}")
    if repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {repeats}")
    if budget is not None and budget < 1:
        raise UsageError(f"--budget must be >= 1 child-epoch, got {budget}")
    for way in ways:
        pipeline.check(way_config(cfg, way, seeds[0]))  # names, params, storage, folders: before any training
    s = cfg.search
    schedule = EpochSchedule(base=s.epochs, step=s.epochs_step, every=s.epochs_every)
    budget = budget or planned_child_epochs(s.generations, s.population_size, s.n_children, schedule)
    if retrain_epochs is not None and retrain_epochs < 1:
        raise UsageError(f"--retrain-epochs must be >= 1, got {retrain_epochs}")
    fixed_epochs = retrain_epochs or schedule.epochs(s.generations)
    earlier = stored_result(cfg)  # its fixed rows are reused when trained for as long, as often
    if earlier.get("fixed_epochs") != fixed_epochs or earlier.get("repeats") != repeats:
        earlier = {}
    runs: dict[str, dict[str, Any]] = {w: {} for w in ways}
    fixed: dict[str, Any] = {}
    for seed in seeds:
        scfg = way_config(cfg, cfg.search.sampler, seed)
        device = pipeline.device_for(scfg)
        data = pipeline.load_data(scfg, device=device)
        reference = pipeline.make_reference(scfg, data, device=device)
        objective = pipeline.make_objective(scfg, data, reference, device=device)
        objectives = {objective_key(scfg): objective}  # a way that trains or scores otherwise gets its own
        for way in ways:
            wcfg = way_config(cfg, way, seed)
            if objective_key(wcfg) not in objectives:
                objectives[objective_key(wcfg)] = pipeline.make_objective(wcfg, data, reference, device=device)
            run = run_way(cfg, objectives[objective_key(wcfg)], data, way=way, seed=seed, budget=budget,
                          repeats=repeats, retrain_epochs=retrain_epochs)
            runs[way][str(seed)] = run
            if echo is not None:
                t = run["test"]
                echo(f"  seed {seed} {way:<12} {run['child_epochs']} child-epochs, winner trial {run['winner']}: "
                     f"test clean {t['clean']:.4f} adv {t['adv']:.4f} fitness {t['fitness']:.4f}")
        fixed[str(seed)] = (earlier["fixed"][str(seed)] if str(seed) in earlier.get("fixed", {}) else
                            fixed_rows(scfg, objective, seed=seed, epochs=fixed_epochs, repeats=repeats))
    result = summarize(ways, seeds, runs, fixed, base=base)
    result.update(budget=budget, repeats=repeats, quick=quick, study=f"{cfg.study.name}-compare",
                  fixed_epochs=fixed_epochs)
    store(cfg, result)
    return result


def stored_result(cfg: RunConfig) -> dict[str, Any]:
    """The result stored on ``<study>-compare`` by an earlier comparison ({} when none)."""
    try:
        study = optuna.load_study(study_name=f"{cfg.study.name}-compare", storage=cfg.study.storage)
    except KeyError:
        return {}
    value = study.user_attrs.get(schema.COMPARE_KEY)
    return value if isinstance(value, dict) else {}


def store(cfg: RunConfig, result: dict[str, Any]) -> optuna.Study:
    """Keep ``result`` on the study ``<study>-compare`` (user attr :data:`~gmsearch.search.schema.COMPARE_KEY`)."""
    study = create_study(study_name=result["study"], storage=cfg.study.storage)
    study.set_user_attr(schema.COMPARE_KEY, result)
    return study
