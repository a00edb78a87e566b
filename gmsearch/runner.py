"""Run a configured study with one or many worker processes.

The parent process prepares what every worker shares (dataset, trained
reference, adversarial sets, reference gradients — all cached on disk), then
spawns ``workers`` processes that optimise the same study in the same
storage. Each worker takes one GPU round-robin when GPUs exist, CPU
otherwise. The sampler stops every worker once all trials of the
``generations`` generations have finished; failed trials are replaced, and
the trials of dead workers are failed by the heartbeat and re-queued for the
others.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from gmsearch import datasets, mutations, pruners, references
from gmsearch.config import RunConfig
from gmsearch.objective import GMObjective
from gmsearch.plugins import load_plugins
from gmsearch.refine import DATA_KEY, data_description
from gmsearch.sampler import GENOME_KEY, EpochSchedule, NicheEvolutionSampler, n_trials_for
from gmsearch.study import create_study

logger = logging.getLogger(__name__)


def _device_for(cfg: RunConfig, worker: int) -> str | None:
    if cfg.device != "auto":
        return cfg.device
    if torch.cuda.is_available():
        return f"cuda:{worker % torch.cuda.device_count()}"
    return "cpu"


def build(cfg: RunConfig, *, worker: int = 0) -> tuple[optuna.Study, GMObjective, int]:
    """Study, objective and the total number of trials for ``cfg``."""
    load_plugins(cfg.plugins)
    device = _device_for(cfg, worker)
    data = datasets.load(
        cfg.data.name, root=cfg.data.root, reduced=cfg.data.reduced, val_fraction=cfg.data.val_fraction,
        seed=cfg.seed, device=device, **cfg.data.options,
    )
    ref = references.get(
        cfg.reference.name, data, arch=cfg.reference.arch, epochs=cfg.reference.epochs, seed=cfg.seed,
        device=device, cache_dir=cfg.study.cache_dir,
    )
    objective = GMObjective(
        data, reference=ref, attack=cfg.attack.name, attack_params=cfg.attack.params,
        lam=cfg.training.lam, loss=cfg.training.loss, fitness=cfg.fitness.name,
        fitness_params=cfg.fitness.params, epochs=cfg.search.epochs, batch_size=cfg.training.batch_size,
        lr=cfg.learning_rate, device=device, cache_dir=cfg.study.cache_dir, seed=cfg.seed,
        artifact_store=cfg.study.artifacts,
    )
    s = cfg.search
    sampler = NicheEvolutionSampler(
        population_size=s.population_size, n_children=s.n_children, min_distance=s.min_distance,
        mutations_per_child=(s.mutations_per_child[0], s.mutations_per_child[1]),
        generations=s.generations,
        epoch_schedule=EpochSchedule(base=s.epochs, step=s.epochs_step, every=s.epochs_every),
        mutation_names=s.mutations or None, budget=mutations.SizeBudget(max_blocks=s.max_blocks),
        seed=cfg.seed,
    )
    two = objective.n_objectives > 1
    study = create_study(
        study_name=cfg.study.name, storage=cfg.study.storage, sampler=sampler,
        pruner=pruners.create(s.pruner, **s.pruner_params),
        directions=["maximize", "maximize"] if two else None,
    )
    if DATA_KEY not in study.user_attrs:  # what `gmsearch export` needs to rebuild the networks
        study.set_user_attr(DATA_KEY, data_description(objective))
    return study, objective, n_trials_for(s.generations, s.population_size, s.n_children)


class _Progress:
    """Callback: stop a worker whose last ``limit`` trials all failed; note whether a round did any work."""

    def __init__(self, limit: int = 25) -> None:
        self.limit = limit
        self.failures = 0
        self.tripped = False
        self.worked = False  # a trial other than a surplus one ran in this round

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.worked = self.worked or GENOME_KEY in trial.system_attrs
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0
        if self.failures >= self.limit:
            logger.error(
                "the last %d trials of this worker failed (see the user attr gmsearch:fail_reason); stopping it",
                self.failures,
            )
            self.tripped = True
            study.stop()


def _remaining(study: optuna.Study, total: int) -> int:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return total - len([t for t in done if GENOME_KEY in t.system_attrs])


def optimize_until_finished(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    *,
    show_progress_bar: bool = False,
    max_consecutive_failures: int = 25,
) -> bool:
    """One worker: optimise ``study`` until every trial of its sampler's generations has finished.

    Any number of these (processes, machines) can work on one study. Failed
    trials are replaced; a trial that another worker failed as stale while
    this one was still running it (heartbeat silent longer than the grace
    period, e.g. under heavy load) has been re-queued, so the worker just goes
    on. It stops early when its last ``max_consecutive_failures`` trials all
    failed, or, on storages without a heartbeat (journal), when only trials
    held by other (possibly dead) workers are left.

    Args:
        study: A study whose sampler is a :class:`~gmsearch.NicheEvolutionSampler` with ``generations`` set.
        objective: The objective, e.g. a :class:`~gmsearch.GMObjective`.
        show_progress_bar: Optuna's progress bar.
        max_consecutive_failures: Stop after this many failed trials in a row.

    Returns:
        Whether the study has all its trials.
    """
    sampler = study.sampler
    if not isinstance(sampler, NicheEvolutionSampler) or sampler.generations is None:
        raise ValueError("optimize_until_finished needs a NicheEvolutionSampler with generations set")
    total = n_trials_for(sampler.generations, sampler.population_size, sampler.n_children)
    progress = _Progress(max_consecutive_failures)
    heartbeat = is_heartbeat_enabled(study._storage)
    while not sampler.is_finished(study) and not progress.tripped:
        progress.worked = False
        remaining = max(_remaining(study, total), 1)  # at least one: a retry or a vacancy may need it
        try:
            # the sampler stops the loop once the generations are done (with other workers too)
            study.optimize(objective, n_trials=remaining, callbacks=[progress], show_progress_bar=show_progress_bar)
        except UpdateFinishedTrialError as exc:
            logger.warning("%s: another worker failed it as stale and re-queued it; going on", exc)
            continue
        if not progress.worked and not heartbeat:
            logger.warning(
                "study %s: the trials left are held by other workers; without a heartbeat they are never "
                "retried if those workers died", study.study_name,
            )
            break
    finished = sampler.is_finished(study)
    if finished:
        logger.info("study %s has all its %d trials", study.study_name, total)
    return finished


def run_worker(cfg: RunConfig, worker: int = 0, *, show_progress_bar: bool = True) -> optuna.Study:
    """Build the configured study and objective and work on it until it has all its trials."""
    study, objective, _ = build(cfg, worker=worker)
    optimize_until_finished(study, objective, show_progress_bar=show_progress_bar)
    return study


def _spawned(cfg_dict: dict[str, Any], worker: int, workers: int) -> None:
    from gmsearch import config

    logging.basicConfig(level=logging.INFO, format=f"[worker {worker}] %(levelname)s %(name)s: %(message)s")
    cfg = config.parse(cfg_dict)
    if _device_for(cfg, worker) == "cpu":  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    run_worker(cfg, worker, show_progress_bar=False)


def shared_storage_warning(storage: str, workers: int) -> str | None:
    """Why ``workers`` processes on ``storage`` may disappoint (None: no concern)."""
    if workers <= 1:
        return None
    if storage.startswith("sqlite"):
        return (
            f"{workers} workers share SQLite storage {storage}: fine on one machine for small studies, but "
            "use PostgreSQL for many workers (SQLite locks the whole file on every write)"
        )
    if storage.startswith("journal:"):
        return (
            f"{workers} workers share journal storage {storage}: it has no heartbeat, so the trial of a "
            "worker that dies stays RUNNING and is never retried; use PostgreSQL (or SQLite) for that"
        )
    return None


def run(cfg: RunConfig, *, workers: int | None = None) -> optuna.Study:
    """Run the study of ``cfg`` with ``workers`` processes (default ``cfg.workers``) and return it.

    With several workers, the parent prepares the shared caches and creates the
    study once, then spawns the workers (one GPU each round-robin, or CPU) and
    waits for them.
    """
    n = workers if workers is not None else cfg.workers
    if n < 1:
        raise ValueError(f"workers must be >= 1, got {n}")
    warning = shared_storage_warning(cfg.study.storage, n)
    if warning:
        logger.warning(warning)
    if n == 1:
        return run_worker(cfg, 0)
    study, objective, _ = build(cfg)  # warm the caches and create the study before the workers start
    del objective
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_spawned, args=(dataclasses.asdict(cfg), i, n)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        logger.warning("%d worker(s) exited with codes %s", len(bad), bad)
    return study
