"""The Optuna objective: build the trial's genome, train it with GM, return its fitness.

:class:`GMObjective` prepares the expensive, trial-independent things once:
the adversarial validation and test sets made from the reference (cached on
disk) and the reference's input gradients on the training split (cached).
Each call then builds the child network from the genome the sampler put on
the trial, trains it with ``CE + lam * GM`` and scores it on the validation
split with the fitness plugin (default ``min(clean, adv)``, eq. 4).

A child that diverges (NaN loss) or runs out of memory fails alone: the
reason is logged and stored in the user attr ``gmsearch:fail_reason``, the
objective returns NaN (Optuna marks the trial FAIL) and the study goes on.
"""

from __future__ import annotations

import gc
import logging
import pickle
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from torch import nn

from gmsearch import attacks, cache
from gmsearch.attacks import AdversarialSet, adversarial_set
from gmsearch.data._loaders import Dataset
from gmsearch.errors import Interrupted
from gmsearch.evaluation import accuracy
from gmsearch.nets.builder import GenomeNet, build, count_params, inherit_weights
from gmsearch.nets.genome import Genome
from gmsearch.search import fitness as fitness_plugins
from gmsearch.search import schema
from gmsearch.search._optuna_private import trial_id_of
from gmsearch.search.schema import (
    EPOCHS_KEY,
    FAIL_REASON_KEY,
    INHERITED_KEY,
    INTERRUPTED,
    PARENT_KEY,
    WEIGHTS_KEY,
    genome_of,
    trial_seed,
)
from gmsearch.search.writes import EpochReports, write_trial
from gmsearch.training import gm_loss
from gmsearch.training.loop import TrainingDivergedError, reference_gradients, resolve_device, train

logger = logging.getLogger(__name__)



def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


class GMObjective:
    """Train each trial's genome with gradient misalignment and score it.

    Args:
        data: Dataset bundle (train / val / test).
        reference: The frozen reference network (the adversarial sets are made from it).
        references: More frozen networks the GM term misaligns against: it becomes the mean of the terms
            against the reference and each of these (beyond the paper; ``[training] references``).
        attack: Attack name (or instance) used to make the adversarial sets.
        attack_params: Hyper-parameters of a named attack.
        lam: Weight of the GM loss (eq. 2).
        fitness: Fitness plugin name (``min_clean_adv`` = eq. 4).
        fitness_params: Extra parameters of the fitness plugin.
        fitness_epochs: The trial's value is the mean of the fitness over its last ``fitness_epochs``
            epochs (each measured on the validation sets after its epoch); 1, the default, is the paper's:
            the trained network's. More smooths the epoch-to-epoch noise of a small validation split
            (``[fitness] last_epochs``; not the paper's). A trial with fewer epochs averages all of them.
        loss: GM variant (``cosine`` = eq. 1).
        epochs: Training epochs when the sampler sets no schedule.
        batch_size: Training batch size (paper: 128).
        lr: Adam learning rate (None: PyTorch default, as in the paper).
        device: Where to train (default: CUDA if available).
        cache_dir: Cache of adversarial sets and reference gradients.
        seed: Fixes each trial's initialisation (with the trial number).
        artifact_store: Where each trial's trained weights are saved: an
            Optuna artifact store, a folder, ``"auto"`` (default: the folder the
            study records, else ``gmsearch_artifacts`` beside its SQLite file,
            recorded on the study) or None (not saved).
        inherit: A child starts from its parent's trained weights for every block
            the mutation left unchanged (:func:`~gmsearch.nets.builder.inherit_weights`)
            and trains ``inherit_epochs`` of its scheduled epochs. A departure from
            the paper (children train from scratch): off by default.
        inherit_epochs: Share of the scheduled epochs an inheriting child trains.
        cuda_graph: On CUDA, capture each child's training step in a CUDA graph
            (see :func:`gmsearch.train`); experimental, off by default.
        gm_batchnorm: How the GM term's input gradient treats the child's
            BatchNorm: ``batch`` (default), ``running`` or ``detached`` (see
            :mod:`gmsearch.training.gm_loss`).
    """

    def __init__(
        self,
        data: Dataset,
        *,
        reference: nn.Module,
        references: Sequence[nn.Module] = (),
        attack: str | attacks.Attack = "pgd_linf",
        attack_params: dict[str, Any] | None = None,
        lam: float = 1.0,
        fitness: str = "min_clean_adv",
        fitness_params: dict[str, Any] | None = None,
        fitness_epochs: int = 1,
        loss: str = "cosine",
        epochs: int = 20,
        batch_size: int = 128,
        lr: float | None = None,
        device: str | torch.device | None = None,
        cache_dir: str | Path | None = None,
        seed: int = 0,
        artifact_store: FileSystemArtifactStore | str | Path | None = "auto",
        inherit: bool = False,
        inherit_epochs: float = 0.5,
        cuda_graph: bool = False,
        gm_batchnorm: str = "batch",
    ) -> None:
        self.device = resolve_device(device)
        self.data = data.to(self.device)
        self.reference = reference.to(self.device).eval()
        #: Every network the GM term misaligns against: the reference first.
        self.gm_references = [self.reference, *(r.to(self.device).eval() for r in references)]
        self.attack = attacks.create(attack, **(attack_params or {})) if isinstance(attack, str) else attack
        self.fitness_name = fitness
        self.fitness = fitness_plugins.create(fitness, **(fitness_params or {}))
        self.n_objectives = fitness_plugins.n_objectives(self.fitness)
        if isinstance(fitness_epochs, bool) or not isinstance(fitness_epochs, int) or fitness_epochs < 1:
            raise ValueError(f"fitness_epochs must be an integer >= 1, got {fitness_epochs!r}")
        self.fitness_epochs = fitness_epochs
        self.lam = lam
        self.loss = loss
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
        if not 0.0 < inherit_epochs <= 1.0:
            raise ValueError(f"inherit_epochs must be in (0, 1], got {inherit_epochs}")
        self.inherit, self.inherit_epochs = inherit, inherit_epochs
        self.cuda_graph = cuda_graph
        gm_loss.check_batchnorm_mode(gm_batchnorm)
        self.gm_batchnorm = gm_batchnorm
        self.adversarial_val = self._adversarial("val")  # before the artifact folder: a failing attack leaves none
        self._artifact_dir: Path | None = None  # recorded on the study at the first trial
        self._auto_store = artifact_store == "auto"
        if isinstance(artifact_store, str | Path) and not self._auto_store:
            self._artifact_dir = Path(artifact_store)
            artifact_store = schema.open_artifact_store(artifact_store)
        self.artifact_store: FileSystemArtifactStore | None = (
            artifact_store if isinstance(artifact_store, FileSystemArtifactStore) else None
        )
        self._adversarial_test: AdversarialSet | None = None
        grads = [reference_gradients(r, self.data.train, cache_dir=self.cache_dir) for r in self.gm_references] \
            if lam else []
        #: The references' input gradients on the training split (K x its shape for K > 1 references).
        self.ref_grads = (grads[0] if len(grads) == 1 else torch.stack(grads)) if grads else None

    def _adversarial(self, split: str) -> AdversarialSet:
        part = getattr(self.data, split)
        return adversarial_set(
            self.reference, part.x, part.y, self.attack, cache_dir=self.cache_dir, tag=split
        )

    @property
    def adversarial_test(self) -> AdversarialSet:
        """Adversarial examples of the test split, made from the reference (cached)."""
        if self._adversarial_test is None:
            self._adversarial_test = self._adversarial("test")
        return self._adversarial_test

    def describe(self) -> str:
        refs = f", references={len(self.gm_references)}" if len(self.gm_references) > 1 else ""
        last = f" over the last {self.fitness_epochs} epochs" if self.fitness_epochs > 1 else ""
        return (f"lam={self.lam}, loss={self.loss}{refs}, fitness={self.fitness_name}{last}, "
                f"attack={self.attack.describe()}")

    def build(self, genome: Genome) -> nn.Module:
        channels, h, w = self.data.input_shape
        return build(genome, in_channels=channels, num_classes=self.data.num_classes, image_size=(h, w))

    def _store_for(self, study: optuna.Study) -> FileSystemArtifactStore | None:
        """The artifact store, opened (``"auto"``) and recorded on ``study`` at the first trial."""
        if self._auto_store and self.artifact_store is None:
            folder = schema.recorded_artifact_dir(study) or schema.default_artifact_dir(schema.storage_url(study))
            self._artifact_dir, self.artifact_store = folder, schema.open_artifact_store(folder)
        if self._artifact_dir is not None:
            schema.record_artifact_dir(study, self._artifact_dir)
            self._artifact_dir = None  # recorded
        return self.artifact_store

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        store = self._store_for(trial.study)
        genome = genome_of(trial)
        epochs = int(trial.user_attrs.get(EPOCHS_KEY, self.epochs))
        torch.manual_seed(trial_seed(self.seed, trial.number) % 2**63)
        net: nn.Module | None = None
        results: dict[str, Any] = {}  # written when the trial ends
        reports = EpochReports(trial)  # the learning curve: with the results, unless a pruner reads it sooner
        trained = False
        try:
            net = self.build(genome).to(self.device)
            results["params"] = count_params(net)
            if self.inherit and self._inherit(trial, net, store):
                epochs = max(1, round(epochs * self.inherit_epochs))
            start = time.perf_counter()
            history = train(
                net, self.data, reference=self.gm_references, lam=self.lam, epochs=epochs,
                batch_size=self.batch_size, lr=self.lr, loss=self.loss, device=self.device,
                seed=self.seed + trial.number, on_epoch=reports, ref_grads=self.ref_grads,
                adversarial_val=self.adversarial_val, fitness=self.fitness, cuda_graph=self.cuda_graph,
                gm_batchnorm=self.gm_batchnorm,
            ).history
            if history:  # each epoch measured the network (in eval mode) on both sets; the last: the trained one
                measured = [(h["val_acc"], h["val_adv_acc"]) for h in history[-self.fitness_epochs:]]
            else:
                measured = [(accuracy(net, self.data.val.x, self.data.val.y),
                             accuracy(net, self.adversarial_val.x, self.adversarial_val.y))]
            clean, adv = measured[-1]
            results.update(clean_acc=clean, adv_acc=adv, epochs=epochs,
                           train_seconds=round(time.perf_counter() - start, 3))
            # checked: a bad value fails the trial before its weights are written
            value = fitness_plugins.mean_of([self.fitness(c, a) for c, a in measured])
            if store is not None:
                weights = self._write_weights(trial, net, genome)
                if weights is not None:
                    results[WEIGHTS_KEY] = weights
            trained = True
            return value  # a float or a tuple of floats: fitness.create checks it
        except (Interrupted, KeyboardInterrupt):
            results[FAIL_REASON_KEY] = INTERRUPTED  # the runner re-queues it with its genome
            raise
        except (TrainingDivergedError, RuntimeError, fitness_plugins.FitnessValueError) as exc:
            if isinstance(exc, fitness_plugins.FitnessValueError):  # the plugin's fault: named, once per trial
                reason = str(exc)
            elif isinstance(exc, TrainingDivergedError) or _is_oom(exc):
                reason = f"{'out of memory' if _is_oom(exc) else 'diverged'}: {exc}"
            else:
                raise
            logger.warning("trial %d failed (%s); the study goes on", trial.number, reason)
            results[FAIL_REASON_KEY] = reason[:500]
            nan = float("nan")
            return tuple([nan] * self.n_objectives) if self.n_objectives > 1 else nan
        finally:
            _store(trial, results, reports.take())
            del net
            if not trained:
                # an exception's frames can hold the network's tensors in reference cycles; a trained child's
                # tensors are freed by reference counting (a full collection costs ~0.4 s in a big process)
                gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _inherit(self, trial: optuna.Trial, net: nn.Module, store: FileSystemArtifactStore | None) -> bool:
        """Copy the parent's unchanged blocks into ``net``; whether any block was copied."""
        parent_number = trial.user_attrs.get(PARENT_KEY)
        if parent_number is None or store is None or not isinstance(net, GenomeNet):
            return False
        parent = next((t for t in trial.study.get_trials(deepcopy=False) if t.number == parent_number), None)
        if parent is None or WEIGHTS_KEY not in parent.user_attrs:
            return False
        try:  # a weights file deleted, moved or damaged since the parent finished: train from scratch
            payload = schema.load_weights(schema.trial_weights_id(parent), [store])
            state, parent_genome = payload["state_dict"], Genome.from_json(payload["genome"])
        except (OSError, ArtifactNotFound, pickle.UnpicklingError, EOFError, RuntimeError, ValueError, KeyError,
                TypeError) as exc:
            logger.warning("trial %d: the weights of its parent, trial %d, cannot be read (%s: %s); training from "
                           "scratch", trial.number, parent_number, type(exc).__name__, str(exc)[:200])
            trial.set_user_attr(INHERITED_KEY, [])
            return False
        copied = inherit_weights(net, state, parent_genome)
        trial.set_user_attr(INHERITED_KEY, copied)
        return bool(copied)

    def _write_weights(self, trial: optuna.Trial, net: nn.Module, genome: Genome) -> str | None:
        """Save the trained weights as an artifact of ``trial``; returns its id (None: the trial has finished)."""
        assert self.artifact_store is not None
        try:
            return schema.save_weights(
                self.artifact_store, trial, net, genome, input_shape=self.data.input_shape,
                num_classes=self.data.num_classes, filename=f"trial-{trial.number}-weights.pt",
            )
        except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale meanwhile: _store says so
            return None

    def load_trial_model(self, trial: optuna.trial.FrozenTrial) -> nn.Module:
        """The trained network of a finished trial, from its saved weights."""
        return load_trial_model(trial, self.artifact_store, self.data, device=self.device)


def _store(trial: optuna.Trial, results: dict[str, Any], intermediate_values: dict[int, float]) -> None:
    """The trial's results (or what it had when it stopped) as user attrs, with the rest of its learning curve."""
    try:
        write_trial(trial.storage, trial_id_of(trial), user_attrs=results, intermediate_values=intermediate_values)
    except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale meanwhile: its retry trains it again
        logger.warning("trial %d was finished by another worker; its results are not stored", trial.number)


def load_trial_model(
    trial: optuna.trial.FrozenTrial,
    artifact_store: FileSystemArtifactStore | str | Path | None,
    data: Dataset | None = None,
    *,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Rebuild a trial's network and load its trained weights from the artifact store.

    Args:
        trial: A finished trial with saved weights.
        artifact_store: The store (or its folder) the weights were saved to.
        data: Only for the input shape and classes of weights saved without them.
        device: Where the network goes (default: CUDA if available).
    """
    if artifact_store is None:
        raise ValueError(f"trial {trial.number}: no artifact store given to load its weights from")
    payload = schema.load_weights(schema.trial_weights_id(trial), [artifact_store])
    return schema.build_from_weights(
        payload,
        input_shape=data.input_shape if data is not None and "input_shape" not in payload else None,
        num_classes=data.num_classes if data is not None and "num_classes" not in payload else None,
        device=resolve_device(device),
    )
