"""Regularized (aging) evolution (the ``regularized`` way), Real et al. 2019, on the shared genome and mutations.

The first ``population_size`` trials are initial candidates drawn as
Algorithm 1 draws them (random genomes at least ``min_distance`` apart).
Every later trial is a child: ``sample_size`` members of the current
population, drawn uniformly (seeded by the trial), the best of them by
fitness is the parent, and the child is an aggressive mutation of it (the
same DEAP toolbox as the niche search). The population is the last
``population_size`` completed trials in completion order (aging: the oldest
leaves, whatever its fitness), a replay of storage that every worker rebuilds
the same (:func:`aging_population`). Children count in generations of
``population_size * n_children`` trials, as in the niche search, so the
planned trials and the epoch schedule are the same.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from gmsearch.nets.genome import Genome
from gmsearch.search.census import Census
from gmsearch.search.samplers._base import GenomeSampler, registry
from gmsearch.search.schema import GENOME_KEY, genome_of


def aging_population(trials: Sequence[FrozenTrial], population_size: int) -> list[FrozenTrial]:
    """The last ``population_size`` completed trials (with a genome), oldest first, in completion order.

    Completion order is ``datetime_complete`` then trial number, as stored, so every worker agrees.
    """
    done = [t for t in trials if t.state == TrialState.COMPLETE and GENOME_KEY in t.system_attrs and t.values]
    done.sort(key=lambda t: (t.datetime_complete.timestamp() if t.datetime_complete else float("inf"), t.number))
    return done[-population_size:]


def tournament(
    population: Sequence[FrozenTrial], sample_size: int, rng: random.Random, direction: StudyDirection
) -> tuple[list[FrozenTrial], FrozenTrial]:
    """``sample_size`` members of ``population`` drawn uniformly, and the best of them (first on ties).

    Fitness is the first objective's value (a population member without a value, i.e. still running, ranks last).
    """
    sample = rng.sample(list(population), min(sample_size, len(population)))
    sign = 1.0 if direction == StudyDirection.MAXIMIZE else -1.0

    def score(t: FrozenTrial) -> float:
        return sign * t.values[0] if t.values else float("-inf")

    best = sample[0]
    for t in sample[1:]:
        if score(t) > score(best):
            best = t
    return sample, best


@registry.register("regularized")
class RegularizedEvolutionSampler(GenomeSampler):
    """Regularized (aging) evolution: tournament selection of the parent, the oldest member leaves.

    Real, Aggarwal, Huang and Le, "Regularized Evolution for Image Classifier
    Architecture Search", AAAI 2019 (Algorithm 1 there).

    Args:
        sample_size: ``S``, population members drawn per child (default
            ``max(2, population_size // 2)``, at most ``population_size``).
        **kwargs: The arguments of :class:`~gmsearch.search.samplers.GenomeSampler`
            (``population_size`` is ``P``).
    """

    name = "regularized"

    def __init__(self, *, sample_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if sample_size is not None and (isinstance(sample_size, bool) or sample_size < 1):
            raise ValueError(f"sample_size must be >= 1, got {sample_size}")
        default = max(2, self.population_size // 2)
        self.sample_size = min(sample_size if sample_size is not None else default, self.population_size)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "sample_size": self.sample_size}

    def propose(
        self, study: Study, trial: FrozenTrial, trials: list[FrozenTrial], census: Census, rng: random.Random
    ) -> tuple[Genome, int | None, int]:
        first = self.initial_candidate(census, rng)
        if first is not None:
            return first
        generation = self.child_generation(census)
        population = aging_population(trials, self.population_size) or census.initial  # none finished yet: never wait
        _, parent = tournament(population, self.sample_size, rng, study.directions[0])
        return self.mutate(genome_of(parent), rng), parent.number, generation
