"""gmsearch evolves CNN architectures with gradient misalignment toward low adversarial transferability.

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

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Everything is imported on first use (PEP 562), so `import gmsearch` and `gmsearch --help` start at once;
# `gms.train` loads torch, `gms.report` plotly, and so on.
_MODULES = {
    "attacks": "gmsearch.attacks",
    "datasets": "gmsearch.data",
    "evaluation": "gmsearch.evaluation",
    "architectures": "gmsearch.nets.architectures",
    "references": "gmsearch.nets.references",
    "zoo": "gmsearch.nets.zoo",
    "fitness": "gmsearch.search.fitness",
    "mutations": "gmsearch.search.mutations",
    "pruners": "gmsearch.search.pruners",
    "samplers": "gmsearch.search.samplers",
    "losses": "gmsearch.training.gm_loss",
    "report": "gmsearch.report",
    "paper": "gmsearch.paper",
}
_NAMES = {
    "gmsearch.evaluation": ("EvalResult", "accuracy", "evaluate", "fooling_rate"),
    "gmsearch.evaluation.compare": ("compare",),
    "gmsearch.nets": ("Block", "Genome", "GenomeError", "build", "count_params", "estimate_flops", "spectrum_distance"),
    "gmsearch.plugins": ("load_plugin", "load_plugins"),
    "gmsearch.report.evaluate": ("evaluate_transfer",),
    "gmsearch.report.plotting": ("plot_architecture",),
    "gmsearch.search.pruners": ("NichePruner",),
    "gmsearch.search": (
        "EpochSchedule", "GMObjective", "NicheEvolutionSampler", "RefineResult", "create_study", "genome_of",
        "lineage", "load_study", "load_trial_model", "n_trials_for", "population", "refine",
    ),
    "gmsearch.training": ("TrainResult", "TrainingDivergedError", "reference_gradients", "train"),
}
_WHERE = {name: module for module, names in _NAMES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    else:
        raise AttributeError(f"module 'gmsearch' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what type checkers and IDEs see
    from gmsearch import attacks, evaluation, paper, report
    from gmsearch import data as datasets
    from gmsearch.evaluation import EvalResult, accuracy, evaluate, fooling_rate
    from gmsearch.evaluation.compare import compare
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
    from gmsearch.report.evaluate import evaluate_transfer
    from gmsearch.report.plotting import plot_architecture
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
        pruners,
        refine,
        samplers,
    )
    from gmsearch.search.pruners import NichePruner
    from gmsearch.training import TrainingDivergedError, TrainResult, reference_gradients, train
    from gmsearch.training import gm_loss as losses

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
    "compare",
    "count_params",
    "create_study",
    "datasets",
    "estimate_flops",
    "evaluate",
    "evaluate_transfer",
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
    "paper",
    "plot_architecture",
    "population",
    "pruners",
    "reference_gradients",
    "references",
    "refine",
    "report",
    "samplers",
    "spectrum_distance",
    "train",
    "zoo",
]
