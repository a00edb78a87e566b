"""Refinement: train the final population's networks further and score them on val and test.

The paper refines the candidates of the final population "by additional
training for another 1,000 epochs" before reporting them (section 4,
implementation details). :func:`refine` does that from each candidate's saved
weights (the Optuna artifact its trial stored), with the objective's loss
(``CE + lam * GM``), then measures clean and adversarial accuracy on the
validation and the held-out test split. Results live on the study, so they
survive the process and show in the dashboard: the study user attr
``gmsearch:refined:<trial number>`` holds the accuracies, the fitness and the
artifact id of the refined weights (uploaded to the study). A candidate
already refined for the same number of epochs is not trained again.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import optuna
import torch

from gmsearch.evaluation import accuracy
from gmsearch.search import schema
from gmsearch.search.objective import GMObjective, load_trial_model
from gmsearch.search.schema import REFINED_PREFIX, WEIGHTS_KEY, genome_of, trial_seed
from gmsearch.search.selection import ranked_population
from gmsearch.training.loop import TrainingDivergedError, train

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class RefineResult:
    """One refined candidate (also stored as a dict in the study user attr ``gmsearch:refined:<trial>``).

    Attributes:
        trial: Number of the candidate's trial.
        epochs: Refinement epochs (on top of the ``search_epochs`` of its trial).
        search_epochs: Epochs the trial trained for during the search.
        val_clean_acc: Clean accuracy on the validation split.
        val_adv_acc: Accuracy on adversarial examples of the validation split.
        test_clean_acc: Clean accuracy on the test split.
        test_adv_acc: Accuracy on adversarial examples of the test split.
        fitness: The objective's fitness of the validation accuracies
            (a list for several objectives).
        weights: Artifact id of the refined weights (an artifact of the study).
        seconds: Training time.
    """

    trial: int
    epochs: int
    search_epochs: int | None
    val_clean_acc: float
    val_adv_acc: float
    test_clean_acc: float
    test_adv_acc: float
    fitness: float | list[float]
    weights: str
    seconds: float


def refine(
    study: optuna.Study,
    objective: GMObjective,
    *,
    epochs: int = 1000,
    top: int | None = None,
    overwrite: bool = False,
) -> list[RefineResult]:
    """Train the final population further from its saved weights and store the results on the study.

    Args:
        study: A finished (or partly finished) gmsearch study.
        objective: The objective the study ran with (data, reference,
            adversarial sets, loss, artifact store); its weights artifacts are read
            and the refined weights written to the same store.
        epochs: Refinement epochs per candidate (paper: 1,000).
        top: Refine only the ``top`` best candidates by fitness (for several
            objectives: by their sum); None refines the whole population.
        overwrite: Train again a candidate already refined for ``epochs`` epochs.

    Returns:
        One :class:`RefineResult` per refined candidate, best first. A candidate
        whose training diverges is logged, recorded with its error, and skipped.

    Raises:
        ValueError: bad ``epochs``/``top``, no artifact store, a study without a
            population, or a candidate without saved weights.

    Example:
        >>> results = gms.refine(study, objective, epochs=1000, top=2)
        >>> results[0].test_adv_acc
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if top is not None and top < 1:
        raise ValueError(f"top must be >= 1 or None, got {top}")
    store = objective.artifact_store
    if store is None:
        raise ValueError("refine needs the objective's artifact store (GMObjective(..., artifact_store=DIR))")
    candidates = ranked_population(study)
    if not candidates:
        raise ValueError(f"study {study.study_name!r} has no population yet (no completed trial with a genome)")
    chosen = candidates[:top]
    missing = [t.number for t in chosen if WEIGHTS_KEY not in t.user_attrs]
    if missing:
        raise ValueError(
            f"trial(s) {missing} have no saved weights (user attr {WEIGHTS_KEY!r}); "
            "run the study with GMObjective(..., artifact_store=DIR)"
        )
    schema.record_data(study, objective.data)
    data = objective.data
    results: list[RefineResult] = []
    for trial in chosen:
        key = f"{REFINED_PREFIX}{trial.number}"
        stored = study.user_attrs.get(key)
        if stored and stored.get("epochs") == epochs and "error" not in stored and not overwrite:
            logger.info("trial %d already refined for %d epochs", trial.number, epochs)
            results.append(RefineResult(**stored))
            continue
        net = load_trial_model(trial, store, data, device=objective.device)
        torch.manual_seed(trial_seed(objective.seed + 1, trial.number) % 2**63)
        logger.info("refining trial %d for %d epochs", trial.number, epochs)
        try:
            trained = train(
                net, data, reference=objective.gm_references, lam=objective.lam, epochs=epochs,
                batch_size=objective.batch_size, lr=objective.lr, loss=objective.loss, device=objective.device,
                seed=objective.seed + trial.number + 1, ref_grads=objective.ref_grads,
            )
        except TrainingDivergedError as exc:
            logger.warning("refining trial %d diverged (%s); the others go on", trial.number, exc)
            study.set_user_attr(key, {"trial": trial.number, "epochs": epochs, "error": str(exc)[:500]})
            continue
        net.eval()
        val_clean = accuracy(net, data.val.x, data.val.y)
        val_adv = accuracy(net, objective.adversarial_val.x, objective.adversarial_val.y)
        test_clean = accuracy(net, data.test.x, data.test.y)
        test_adv = accuracy(net, objective.adversarial_test.x, objective.adversarial_test.y)
        fit = objective.fitness(val_clean, val_adv)
        result = RefineResult(
            trial=trial.number, epochs=epochs, search_epochs=trial.user_attrs.get("epochs"),
            val_clean_acc=val_clean, val_adv_acc=val_adv, test_clean_acc=test_clean, test_adv_acc=test_adv,
            fitness=[float(v) for v in fit] if isinstance(fit, tuple | list) else float(fit),
            weights=schema.save_weights(
                store, study, net, genome_of(trial), input_shape=data.input_shape,
                num_classes=data.num_classes,
            ), seconds=round(trained.seconds, 3),
        )
        study.set_user_attr(key, asdict(result))
        results.append(result)
    return results


def refined(study: optuna.Study) -> list[RefineResult]:
    """The refinement results stored on ``study``, by trial number (failed refinements left out)."""
    rows = [
        RefineResult(**value) for key, value in study.user_attrs.items()
        if key.startswith(REFINED_PREFIX) and "error" not in value
    ]
    return sorted(rows, key=lambda r: r.trial)
