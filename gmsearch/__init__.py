"""gmsearch: evolve CNN architectures with gradient misalignment toward low adversarial transferability.

Implements Operiano et al., "Evolving Architectures with Gradient
Misalignment toward Low Adversarial Transferability" (2021) as an Optuna
plugin framework: the steady-state niched neuroevolution is an Optuna
sampler built on DEAP, each child is an Optuna trial trained with the
gradient-misalignment loss, and all search state lives in Optuna storage.

Example:
    >>> import gmsearch as gms
    >>> data = gms.datasets.load("digits", seed=0)
    >>> ref = gms.references.get("hand_a", data)
    >>> objective = gms.GMObjective(data, reference=ref, attack="pgd_linf",
    ...                             attack_params={"eps": 0.2, "alpha": 0.05})
    >>> sampler = gms.NicheEvolutionSampler(population_size=4, n_children=2, seed=0)
    >>> study = gms.create_study(study_name="digits", sampler=sampler)
    >>> study.optimize(objective, n_trials=20)
"""

from __future__ import annotations

__version__ = "0.1.0"

from gmsearch import (
    architectures,
    attacks,
    datasets,
    fitness,
    losses,
    mutations,
    pruners,
    references,
    report,
    zoo,
)
from gmsearch.builder import build, count_params, estimate_flops
from gmsearch.evaluation import EvalResult, accuracy, evaluate, fooling_rate
from gmsearch.genome import Block, Genome, GenomeError, spectrum_distance
from gmsearch.objective import GMObjective, load_trial_model
from gmsearch.plotting import plot_architecture
from gmsearch.plugins import load_plugin, load_plugins
from gmsearch.pruners import NichePruner
from gmsearch.refine import RefineResult, refine
from gmsearch.sampler import (
    EpochSchedule,
    NicheEvolutionSampler,
    genome_of,
    lineage,
    n_trials_for,
    population,
)
from gmsearch.study import create_study, load_study
from gmsearch.training import TrainingDivergedError, TrainResult, reference_gradients, train

__all__ = [
    "Block",
    "EpochSchedule",
    "EvalResult",
    "GMObjective",
    "Genome",
    "GenomeError",
    "NicheEvolutionSampler",
    "NichePruner",
    "RefineResult",
    "TrainResult",
    "TrainingDivergedError",
    "__version__",
    "accuracy",
    "architectures",
    "attacks",
    "build",
    "count_params",
    "create_study",
    "datasets",
    "estimate_flops",
    "evaluate",
    "fitness",
    "fooling_rate",
    "genome_of",
    "lineage",
    "load_plugin",
    "load_plugins",
    "load_study",
    "load_trial_model",
    "losses",
    "mutations",
    "n_trials_for",
    "plot_architecture",
    "population",
    "pruners",
    "reference_gradients",
    "references",
    "refine",
    "report",
    "spectrum_distance",
    "train",
    "zoo",
]
