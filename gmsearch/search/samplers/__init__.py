"""Ways of spending the search budget: sampler plugins on one genome, mutation registry, size budget and schedule.

``[search] sampler`` names one of :func:`names`; each is a
:class:`GenomeSampler` subclass (the shared bookkeeping) giving its proposal
rule and population rule:

- ``niche``: Algorithm 1 of the paper (:class:`NicheEvolutionSampler`), the default.
- ``random``: every trial a fresh genome from the initial-population prior.
- ``regularized``: aging evolution (Real et al. 2019), the same mutations.
- ``restarts``: one fixed genome (default: the reference's) under new seeds.

Register another with ``@gms.samplers.register("name")`` on a
:class:`GenomeSampler` subclass; ``gmsearch plugins`` lists them.
"""

from __future__ import annotations

from typing import Any

from gmsearch.search.samplers._base import EpochSchedule, GenomeSampler, n_trials_for, registry
from gmsearch.search.samplers.niche import NicheEvolutionSampler
from gmsearch.search.samplers.random import RandomGenomeSampler
from gmsearch.search.samplers.regularized import RegularizedEvolutionSampler
from gmsearch.search.samplers.restarts import RestartsSampler

register = registry.register
get = registry.get
names = registry.names


def create(name: str, **kwargs: Any) -> GenomeSampler:
    """The sampler registered as ``name`` with ``kwargs`` (an unknown name: one line listing :func:`names`)."""
    sampler: GenomeSampler = registry.create(name, **kwargs)
    return sampler


__all__ = [
    "EpochSchedule",
    "GenomeSampler",
    "NicheEvolutionSampler",
    "RandomGenomeSampler",
    "RegularizedEvolutionSampler",
    "RestartsSampler",
    "create",
    "get",
    "n_trials_for",
    "names",
    "register",
    "registry",
]
