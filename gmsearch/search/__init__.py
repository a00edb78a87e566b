"""Search: Algorithm 1 as an Optuna sampler, the GM objective, fitness and mutation plugins, studies,
and refinement of the final population."""

from __future__ import annotations

from gmsearch.search import (
    _optuna_private,  # noqa: F401  (first: an Optuna it does not know stops here)
    fitness,
    mutations,
)
from gmsearch.search.objective import GMObjective, load_trial_model
from gmsearch.search.refinement import RefineResult, refine
from gmsearch.search.sampler import EpochSchedule, NicheEvolutionSampler, n_trials_for
from gmsearch.search.schema import genome_of
from gmsearch.search.selection import lineage, population, ranked_population
from gmsearch.search.study import create_study, load_study
from gmsearch.search.writes import EpochReports

__all__ = [
    "EpochReports",
    "EpochSchedule",
    "GMObjective",
    "NicheEvolutionSampler",
    "RefineResult",
    "create_study",
    "fitness",
    "genome_of",
    "lineage",
    "load_study",
    "load_trial_model",
    "mutations",
    "n_trials_for",
    "population",
    "ranked_population",
    "refine",
]
