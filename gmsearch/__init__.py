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

import importlib
from typing import Any

from gmsearch import attacks, evaluation
from gmsearch import data as datasets
from gmsearch.evaluation import EvalResult, accuracy, evaluate, fooling_rate
from gmsearch.nets import (
    Block,
    Genome,
    GenomeError,
    architectures,
    build,
    count_params,
    estimate_flops,
    references,
    spectrum_distance,
    zoo,
)
from gmsearch.plugins import load_plugin, load_plugins
from gmsearch.search import (
    EpochSchedule,
    GMObjective,
    NicheEvolutionSampler,
    RefineResult,
    create_study,
    fitness,
    genome_of,
    lineage,
    load_study,
    load_trial_model,
    mutations,
    n_trials_for,
    population,
    refine,
)
from gmsearch.training import TrainingDivergedError, TrainResult, reference_gradients, train
from gmsearch.training import gm_loss as losses

# Heavy on import (plotly, the paper harness): loaded on first use.
_LAZY = {"report": "gmsearch.report", "paper": "gmsearch.paper", "plot_architecture": "gmsearch.report.plotting"}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'gmsearch' has no attribute {name!r}")
    module = importlib.import_module(target)
    return module if target.endswith(name) else getattr(module, name)


__all__ = [
    "Block",
    "EpochSchedule",
    "EvalResult",
    "GMObjective",
    "Genome",
    "GenomeError",
    "NicheEvolutionSampler",
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
    "evaluation",
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
    "reference_gradients",
    "references",
    "refine",
    "report",
    "spectrum_distance",
    "train",
    "zoo",
]
