"""Optuna's own sampler test suite (``optuna.testing.pytest_samplers``) run against NicheEvolutionSampler.

The suite is meant to be reused by third-party samplers: subclass its test
cases and provide a ``sampler`` fixture returning a factory. It checks that
``sample_independent`` (delegated to Optuna's RandomSampler) respects every
distribution, that objectives which never read the genome and suggest their
own params work (conditional, dynamic ranges, NaN values, PartialFixedSampler,
``ask(fixed_distributions)``), and multi-objective studies.

Not applicable, skipped with a reason: ``RelativeSamplerTestCase``'s
``sample_relative`` tests — this sampler's relative search space is always
empty (it writes the genome and its spectrum params in ``before_trial``
instead), so ``sample_relative`` returns no values for a user search space;
and ``SingleOnlySamplerTestCase`` — the sampler supports several objectives.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
)

import gmsearch as gms
from gmsearch.search.sampler import SPECTRUM_PARAMS
from gmsearch.search.schema import GENOME_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _factory() -> BaseSampler:
    return gms.NicheEvolutionSampler(population_size=2, n_children=2, min_distance=2.0, seed=0)


class TestBasic(BasicSamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return _factory


class TestMultiObjective(MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return _factory


_NO_RELATIVE = (
    "NicheEvolutionSampler has an empty relative search space: it sets the genome and its spectrum "
    "params in before_trial, so sample_relative never returns values for a user search space"
)


class TestRelative(RelativeSamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return _factory

    @pytest.mark.skip(reason=_NO_RELATIVE)
    def test_sample_relative_numerical(self) -> None: ...

    @pytest.mark.skip(reason=_NO_RELATIVE)
    def test_sample_relative_categorical(self) -> None: ...

    @pytest.mark.skip(reason=_NO_RELATIVE)
    def test_sample_relative_mixed(self) -> None: ...


def test_every_trial_still_gets_a_genome_with_user_params() -> None:
    """Objectives that ignore the genome and suggest their own params: the evolution still runs."""
    study = optuna.create_study(direction="maximize", sampler=_factory())
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + gms.genome_of(t).spectrum()[0], n_trials=8, n_jobs=2)
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(GENOME_KEY in t.system_attrs and set(SPECTRUM_PARAMS) | {"x"} <= set(t.params) for t in trials)
    assert len(gms.population(study)) == 2
