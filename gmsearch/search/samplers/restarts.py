"""Restarts (the ``restarts`` way): one fixed genome trained again and again under new seeds.

Every trial trains the same genome (default: the reference's architecture
when it is a zoo genome, e.g. ``hand_a``), so the study is Ref+GM given the
search's budget: as many trials as the niche search, trial ``i`` training the
epochs the niche search's trial ``i`` would. The trials differ only in their
seeds: the objective seeds a trial's initialisation and batches from its
number (:func:`gmsearch.search.schema.trial_seed`).
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any

from optuna.study import Study
from optuna.trial import FrozenTrial

from gmsearch.nets import zoo
from gmsearch.nets.genome import Genome
from gmsearch.search.census import Census
from gmsearch.search.samplers._base import GenomeSampler, fresh_index, niche_generation, registry

logger = logging.getLogger(__name__)

#: The genome restarts train when none is given: the paper's first hand-engineered reference.
DEFAULT_GENOME = "hand_a"

_warned: set[str] = set()  # genome and budget pairs already warned about in this process


def _genome(value: Genome | str) -> Genome:
    if isinstance(value, Genome):
        return value
    if value.lstrip().startswith("{"):
        return Genome.from_json(value)
    if value not in zoo.names():
        raise ValueError(f"genome {value!r} is neither genome JSON nor a zoo genome; zoo genomes: {zoo.names()}")
    return zoo.genome(value)


@registry.register("restarts")
class RestartsSampler(GenomeSampler):
    """A fixed genome trained with a new seed every trial (Ref+GM given the search's budget).

    Restarts with new seeds are the control every architecture search must
    beat: Li and Talwalkar, "Random Search and Reproducibility for Neural
    Architecture Search", UAI 2019; Yang, Esperança and Carlucci, "NAS
    Evaluation is Frustratingly Hard", ICLR 2020.

    Args:
        genome: The genome every trial trains: a :class:`~gmsearch.Genome`,
            genome JSON or a zoo genome's name (default ``hand_a``).
        **kwargs: The arguments of :class:`~gmsearch.search.samplers.GenomeSampler`
            (``min_distance`` and the mutation settings are not used).
    """

    name = "restarts"
    fresh = True

    def __init__(self, *, genome: Genome | str = DEFAULT_GENOME, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.genome = _genome(genome)
        key = f"{self.genome.to_json()} {self.budget}"
        if not self.budget.allows(self.genome) and key not in _warned:  # once: compare builds it per seed
            _warned.add(key)
            logger.warning("restarts: genome %s exceeds the size budget %s; it trains as given",
                           self.genome.summary(), self.budget)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "genome": json.loads(self.genome.to_json())}

    def propose(
        self, study: Study, trial: FrozenTrial, trials: list[FrozenTrial], census: Census, rng: random.Random
    ) -> tuple[Genome, int | None, int]:
        return self.genome, None, niche_generation(fresh_index(census), self.population_size, self.n_children)
