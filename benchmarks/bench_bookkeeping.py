"""(4) gmsearch + Optuna bookkeeping per trial (SQLite storage), as a share of a paper-scale child (the target: 1%)
and of the measured digits trial.

Two runs: gmsearch's default SQLite settings (write-ahead log on a local disk; the target line) and
SQLite's rollback journal (``GMSEARCH_SQLITE_WAL=0``, what network file systems get).

A real small study: the evolution sampler, the GM objective on digits (8
epochs per child as in the quickstart; 1 in quick mode), SQLite storage. Every call the main thread makes
into the storage (database reads and writes) and into the sampler's hooks
(``before_trial``, ``sample_relative``, ``after_trial`` ...) is timed; the
objective is timed too. Bookkeeping is everything but the objective's own
compute: trial wall time minus (objective time minus the storage calls made
inside it, such as ``trial.report``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import optuna

import gmsearch as gms
from benchmarks import trials
from benchmarks.common import Context, Line, at_most, log
from gmsearch.search._optuna_private import storage_of
from gmsearch.search.study import make_storage

#: A paper-scale child (20 epochs of reduced CIFAR-10, ``hand_a``, GM) on this project's 2-core VM, 1 thread:
#: 1.2 children per hour (``--only children``: 153 s per GM epoch). Elsewhere, e.g. on a GPU, measure it with
#: ``--only children`` there and set ``GMSEARCH_BENCH_CHILD_SECONDS``.
PAPER_CHILD_SECONDS = 3000.0

SAMPLER_HOOKS = ["before_trial", "after_trial", "sample_relative", "infer_relative_search_space",
                 "sample_independent"]


def _measure(ctx: Context, objective: Any, n_trials: int, *, wal: bool) -> tuple[float, float, float, float]:
    """(wall, objective compute, storage, sampler hooks) seconds for ``n_trials`` trials."""
    timer = trials.CallTimer()
    os.environ["GMSEARCH_SQLITE_WAL"] = "1" if wal else "0"
    try:
        storage = make_storage(f"sqlite:///{ctx.workdir / ('wal.db' if wal else 'bookkeeping.db')}")
    finally:
        del os.environ["GMSEARCH_SQLITE_WAL"]
    assert isinstance(storage, optuna.storages.RDBStorage)
    sampler = trials.sampler(ctx.seed)
    timer.instrument("sampler", sampler, SAMPLER_HOOKS)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = gms.create_study(study_name="bookkeeping", storage=storage, sampler=sampler)  # gmsearch's defaults
    # every storage call, Optuna's and gmsearch's (public calls on the cache Optuna wraps RDB storages in)
    timer.instrument("storage", storage_of(study))
    in_objective: dict[str, float] = {"seconds": 0.0, "storage": 0.0}

    def timed_objective(trial: optuna.Trial) -> float | tuple[float, ...]:
        before = timer.total("storage")
        t0 = time.perf_counter()
        try:
            return objective(trial)
        finally:
            in_objective["seconds"] += time.perf_counter() - t0
            in_objective["storage"] += timer.total("storage") - before

    t0 = time.perf_counter()
    study.optimize(timed_objective, n_trials=n_trials)
    wall = time.perf_counter() - t0
    compute = in_objective["seconds"] - in_objective["storage"]
    log(
        f"bookkeeping{' (WAL)' if wal else ''}: {n_trials} trials in {wall:.2f} s, objective compute "
        f"{compute:.2f} s; storage {timer.total('storage'):.3f} s ({timer.calls.get('storage', 0)} calls), "
        f"sampler hooks {timer.total('sampler'):.3f} s"
    )
    return wall, compute, timer.total("storage"), timer.total("sampler")


def run(ctx: Context) -> list[Line]:
    n_trials = 2 if ctx.quick else 6
    objective = trials.objective(ctx, epochs=1 if ctx.quick else 8)  # full: the quickstart's 8 epochs
    child = float(os.environ.get("GMSEARCH_BENCH_CHILD_SECONDS", PAPER_CHILD_SECONDS))
    lines = []
    for wal in (False, True):
        wall, compute, storage, sampler = _measure(ctx, objective, n_trials, wal=wal)
        overhead = wall - compute
        note = (f" ({overhead / n_trials * 1e3:.0f} ms of {wall / n_trials:.2f} s per trial; storage "
                f"{storage / n_trials * 1e3:.0f} ms, sampler hooks incl. their storage calls "
                f"{sampler / n_trials * 1e3:.0f} ms)")
        journal = "" if wal else "[sqlite rollback journal: GMSEARCH_SQLITE_WAL=0]"
        lines.append(Line(f"bookkeeping_share_of_digits_trial{journal}", f"{100 * overhead / wall:.2f}%{note}"))
        share = 100 * overhead / n_trials / child
        if wal:  # gmsearch's default for a SQLite file on a local disk: the target
            lines.append(at_most("bookkeeping_share_of_paper_child", share, 1.0, unit="%", fmt=".3f",
                                 note=f" (of a {child:.0f} s child)"))
        else:
            lines.append(Line(f"bookkeeping_share_of_paper_child{journal}", f"{share:.3f}% (of a {child:.0f} s child)"))
    return lines
