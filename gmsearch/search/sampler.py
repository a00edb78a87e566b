"""Algorithm 1 of the paper as an Optuna sampler: :class:`NicheEvolutionSampler` (kept importable from here).

The sampler plugins live in :mod:`gmsearch.search.samplers`: the shared
bookkeeping in :class:`~gmsearch.search.samplers.GenomeSampler`, Algorithm 1
in :mod:`gmsearch.search.samplers.niche` (its docstring describes roles,
many workers, surplus trials and the replay).
"""

from __future__ import annotations

from gmsearch.search.samplers._base import (
    SPECTRUM_MAX,
    SPECTRUM_PARAMS,
    EpochSchedule,
    GenomeSampler,
    n_trials_for,
    niche_generation,
)
from gmsearch.search.samplers.niche import NicheEvolutionSampler

__all__ = [
    "SPECTRUM_MAX",
    "SPECTRUM_PARAMS",
    "EpochSchedule",
    "GenomeSampler",
    "NicheEvolutionSampler",
    "n_trials_for",
    "niche_generation",
]
