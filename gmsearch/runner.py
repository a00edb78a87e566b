"""Run a configured study with one or many worker processes.

The parent process prepares what every worker shares (dataset, trained
reference, adversarial sets, reference gradients — all cached on disk), then
spawns ``workers`` processes that optimise the same study in the same
storage. Each worker takes one GPU round-robin when GPUs exist, CPU
otherwise. The study stops when ``generations`` generations have been
started; re-queued trials of dead workers are picked up by the others.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
from typing import Any

import optuna
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from gmsearch import datasets, mutations, references
from gmsearch.config import RunConfig
from gmsearch.objective import GMObjective
from gmsearch.plugins import load_plugins
from gmsearch.sampler import EpochSchedule, NicheEvolutionSampler, n_trials_for
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
        epoch_schedule=EpochSchedule(base=s.epochs, step=s.epochs_step, every=s.epochs_every),
        mutation_names=s.mutations or None, budget=mutations.SizeBudget(max_blocks=s.max_blocks),
        seed=cfg.seed,
    )
    two = objective.n_objectives > 1
    study = create_study(
        study_name=cfg.study.name, storage=cfg.study.storage, sampler=sampler,
        directions=["maximize", "maximize"] if two else None,
    )
    return study, objective, n_trials_for(s.generations, s.population_size, s.n_children)


def run_worker(cfg: RunConfig, worker: int = 0, *, show_progress_bar: bool = True) -> None:
    """Optimise the configured study until it holds all its trials."""
    study, objective, total = build(cfg, worker=worker)
    stop = MaxTrialsCallback(total, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    remaining = total - len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    if remaining <= 0:
        logger.info("study %s already has its %d trials", study.study_name, total)
        return
    study.optimize(objective, n_trials=remaining, callbacks=[stop], show_progress_bar=show_progress_bar)


def _spawned(cfg_dict: dict[str, Any], worker: int) -> None:
    from gmsearch import config

    logging.basicConfig(level=logging.INFO, format=f"[worker {worker}] %(levelname)s %(name)s: %(message)s")
    run_worker(config.parse(cfg_dict), worker, show_progress_bar=False)


def run(cfg: RunConfig, *, workers: int | None = None) -> optuna.Study:
    """Run the study of ``cfg`` with ``workers`` processes (default ``cfg.workers``)."""
    n = workers or cfg.workers
    if n > 1 and cfg.study.storage.startswith("sqlite"):
        logger.warning(
            "%d workers share SQLite storage %s: fine on one machine for small studies, but use "
            "PostgreSQL for many workers (lock contention)", n, cfg.study.storage,
        )
    if n == 1:
        run_worker(cfg, 0)
    else:
        build(cfg)  # warm the caches once before the workers start
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_spawned, args=(dataclasses.asdict(cfg), i)) for i in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            logger.warning("%d worker(s) exited with codes %s", len(bad), bad)
    study, _, _ = build(cfg)
    return study
