"""Every registered pruner keeps Algorithm 1: the sampler sees the whole study, initial candidates are never pruned."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

import gmsearch as gms
from gmsearch.search import pruners
from gmsearch.search.schema import PARENT_KEY, REPLACED_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)

S, N, G, E = 4, 2, 3, 4  # population, children per candidate, generations, epochs

#: Settings that make each pruner actually stop trials in this small study (others: their defaults).
PARAMS: dict[str, dict[str, Any]] = {
    "median": {"n_startup_trials": 2},
    "hyperband": {"min_resource": 1, "max_resource": E, "reduction_factor": 2},
    "niche": {"warmup": 0, "margin": 0.0},
}


def score(genome: gms.Genome, number: int) -> float:
    n_conv, n_pool, n_sconv, n_sum, n_concat = genome.spectrum()
    return -abs(n_conv - 6) - 0.5 * abs(n_sum - 2) + 0.25 * n_pool - 0.1 * n_sconv + 0.05 * n_concat \
        + 0.37 * (number % 3) - 5.0 * (number % 4 == 2)  # trial 2: an initial candidate far below the rest


def objective(trial: optuna.Trial) -> float:
    final = score(gms.genome_of(trial), trial.number)
    for epoch in range(1, E + 1):
        trial.report(final - 0.3 * (E - epoch), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}")
    return final


def run(pruner: optuna.pruners.BasePruner) -> optuna.Study:
    sampler = gms.NicheEvolutionSampler(population_size=S, n_children=N, min_distance=3.0, generations=G, seed=3)
    study = gms.create_study(study_name="safety", storage=None, sampler=sampler, pruner=pruner)
    study.optimize(objective, n_trials=3 * gms.n_trials_for(G, S, N))  # generations stop it
    return study


def check_algorithm_1(study: optuna.Study) -> None:
    """The replay's invariants: S initial candidates first, every later trial a child, replacements agreed."""
    trials = study.trials
    initial = [t for t in trials if t.user_attrs.get(PARENT_KEY) is None]
    complete_initial = [t for t in initial if t.state == TrialState.COMPLETE]
    assert [t.number for t in complete_initial] == list(range(S)) or len(complete_initial) == S, \
        f"initial candidates {[(t.number, t.state.name) for t in initial]}"
    first_child = min(t.number for t in trials if t.user_attrs.get(PARENT_KEY) is not None)
    assert all(t.number < first_child for t in initial), \
        f"initial candidates after the first child: {[t.number for t in initial if t.number > first_child]}"
    numbers = {t.number for t in trials}
    for t in trials:
        if t.number >= first_child:
            assert t.user_attrs[PARENT_KEY] in numbers
    assert len(gms.population(study)) == S
    rows = {r["number"]: r for r in gms.lineage(study)}
    for t in trials:  # the worker's own record of replacement is the replay's (one worker: exactly)
        if t.state == TrialState.COMPLETE and t.user_attrs.get(PARENT_KEY) is not None:
            assert t.user_attrs[REPLACED_KEY] == rows[t.number]["replaced"], t.number
    children = [t for t in trials if t.user_attrs.get(PARENT_KEY) is not None]
    assert len(children) == G * S * N


@pytest.mark.parametrize("name", sorted(pruners.names()))
def test_every_registered_pruner_keeps_algorithm_1(name: str) -> None:
    pruner = pruners.create(name, **PARAMS.get(name, {}))
    study = run(pruner)
    check_algorithm_1(study)
    initial = [t for t in study.trials if t.user_attrs.get(PARENT_KEY) is None]
    assert [t.number for t in initial] == list(range(S))  # initial candidates are never pruned
    assert all(t.state == TrialState.COMPLETE for t in initial)
    if name in PARAMS:
        assert any(t.state == TrialState.PRUNED for t in study.trials), f"{name} must stop some children here"


@pytest.mark.parametrize(
    "pruner",
    [optuna.pruners.MedianPruner(n_startup_trials=2),
     optuna.pruners.HyperbandPruner(min_resource=1, max_resource=E, reduction_factor=2)],
    ids=["median", "hyperband"],
)
def test_optunas_own_pruners_given_directly_keep_algorithm_1(pruner: optuna.pruners.BasePruner) -> None:
    """Not through the registry: Hyperband hands the sampler a per-bracket study, Median prunes initial candidates."""
    check_algorithm_1(run(pruner))


def test_the_registry_wraps_pruners_that_could_prune_initial_candidates() -> None:
    median = pruners.create("median", n_startup_trials=2)
    assert isinstance(median, pruners.ChildrenOnly) and isinstance(median.inner, optuna.pruners.MedianPruner)
    assert not isinstance(pruners.create("hyperband"), optuna.pruners.HyperbandPruner)  # no per-bracket study
    assert isinstance(pruners.create("nop"), optuna.pruners.NopPruner)  # never prunes: as it is
    assert isinstance(pruners.create("niche"), pruners.NichePruner)  # prunes children only by itself
    assert pruners.ChildrenOnly(median) is not median and pruners.children_only(median) is median


@pytest.mark.parametrize("pruner", [pruners.create("median", n_startup_trials=2),
                                    optuna.pruners.MedianPruner(n_startup_trials=2)], ids=["registered", "direct"])
def test_ways_without_a_population_are_pruned_and_keep_their_trial_count(pruner: optuna.pruners.BasePruner) -> None:
    """``random`` (every trial fresh, no parent) has no initial population to protect: a pruned trial is spent."""
    sampler = gms.samplers.create("random", population_size=S, n_children=N, generations=G, seed=3)
    study = gms.create_study(study_name="fresh", storage=None, sampler=sampler, pruner=pruner)
    study.optimize(objective, n_trials=3 * gms.n_trials_for(G, S, N))  # generations stop it
    assert any(t.state == TrialState.PRUNED for t in study.trials)
    assert len(study.trials) == gms.n_trials_for(G, S, N)
