"""Random search (the ``random`` way): every trial a fresh genome from the initial-population prior.

Each trial draws one genome as Algorithm 1 draws an initial candidate
(:func:`gmsearch.search.prior.random_genome_far_from` with no genome to
keep away from), within the size budget and independent of every other trial:
no parent, no population. The study runs as many trials as the niche search
(``n_trials_for(generations, population_size, n_children)``), trial ``i``
training the epochs the niche search's trial ``i`` would.
"""

from __future__ import annotations

import random

from optuna.study import Study
from optuna.trial import FrozenTrial

from gmsearch.nets.genome import Genome
from gmsearch.search import prior
from gmsearch.search.census import Census
from gmsearch.search.samplers._base import GenomeSampler, fresh_index, niche_generation, registry


@registry.register("random")
class RandomGenomeSampler(GenomeSampler):
    """Random search over genomes: every trial an independent draw from the initial-population prior.

    Bergstra and Bengio, "Random Search for Hyper-Parameter Optimization",
    JMLR 2012; as an architecture-search baseline, Li and Talwalkar, "Random
    Search and Reproducibility for Neural Architecture Search", UAI 2019.
    Takes the arguments of :class:`~gmsearch.search.samplers.GenomeSampler`
    (``min_distance`` and the mutation settings are not used).
    """

    name = "random"
    fresh = True

    def propose(
        self, study: Study, trial: FrozenTrial, trials: list[FrozenTrial], census: Census, rng: random.Random
    ) -> tuple[Genome, int | None, int]:
        genome = prior.random_genome_far_from([], 0.0, rng, budget=self.budget)
        return genome, None, niche_generation(fresh_index(census), self.population_size, self.n_children)
