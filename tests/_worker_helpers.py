"""What the multi-worker tests share: a cheap spectrum fitness and one worker's loop."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial

import gmsearch as gms
from gmsearch import runner
from gmsearch.search.schema import PARENT_KEY


def spectrum_fitness(genome: gms.Genome) -> float:
    """A fitness that depends on the architecture only (no training), so niches compete."""
    n_conv, n_pool, n_sconv, n_sum, n_concat = genome.spectrum()
    return -abs(n_conv - 6) - 0.5 * abs(n_sum - 2) + 0.25 * n_pool - 0.1 * n_sconv + 0.05 * n_concat


def work_until_finished(study: optuna.Study, seconds: float, child_seconds: float | None = None) -> None:
    """One worker: optimise until the sampler stops the study (all generations finished), as `gmsearch run` does."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def objective(trial: optuna.Trial) -> float:
        genome = gms.genome_of(trial)  # prunes a surplus trial at once
        trial.set_user_attr("pid", os.getpid())
        is_child = trial.user_attrs[PARENT_KEY] is not None
        time.sleep(child_seconds if is_child and child_seconds is not None else seconds)
        return spectrum_fitness(genome)

    assert runner.optimize_until_finished(study, objective)


def in_child(target: Callable[..., object], *args: object) -> mp.process.BaseProcess:
    """Start ``target(*args)`` in a forked process (the parent holds no connection across the fork)."""
    gc.collect()  # no half-dead connection objects for the child to finalise
    process = mp.get_context("fork").Process(target=target, args=args)  # type: ignore[attr-defined]
    process.start()
    return process


def join_all(workers: list[mp.process.BaseProcess], timeout: float) -> None:
    """Wait for every worker up to ``timeout`` seconds in all; kill the ones still alive (none outlives a test)."""
    deadline = time.monotonic() + timeout
    for w in workers:
        w.join(max(deadline - time.monotonic(), 0.1))
    for w in workers:
        if w.is_alive():
            w.kill()
            w.join()


def wait_for(study: optuna.Study, found: Callable[[FrozenTrial], bool], what: str, timeout: float = 30) -> FrozenTrial:
    """The first trial of ``study`` for which ``found`` holds, polled until ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = [t for t in study.get_trials(deepcopy=False) if found(t)]
        if hits:
            return hits[0]
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
