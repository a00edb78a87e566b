"""(5) Worker scaling: children per hour with 1, 2, 4 (and on CUDA 8) worker processes on one device.

Each worker is a separate process (as ``gmsearch run --workers N`` starts
them) optimising one shared SQLite study with a real GM child-training
objective of fixed cost (a small CNN, one epoch on digits). Workers load
everything from the cache, wait at a barrier, and the clock runs from the
barrier until the last one finishes. Every worker runs the same number of
children, so perfect scaling keeps the wall time constant. On CPU each worker
gets one core (one torch thread); on CUDA all share one GPU and split the
host's cores, as ``gmsearch run --workers-per-device K`` places K workers on
each GPU.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import trials
from benchmarks.common import Context, Line, log
from gmsearch.runner import worker_threads


def _worker(workdir: str, device: str, quick: bool, threads: int, n_trials: int, study_name: str,
            barrier: Any) -> None:
    try:
        torch.set_num_threads(threads)
        ctx = Context(device=torch.device(device), quick=quick, workdir=Path(workdir))
        objective = trials.fixed_child_objective(ctx)
        study = trials.study(Path(workdir) / "workers.db", study_name)
    except BaseException:
        barrier.abort()  # the parent stops waiting at once
        raise
    barrier.wait()
    study.optimize(objective, n_trials=n_trials)


def _throughput(ctx: Context, workers: int, per_worker: int) -> float:
    """Children per hour with ``workers`` processes running ``per_worker`` children each."""
    threads = 1 if not ctx.cuda else worker_threads(workers)  # on CUDA: as `gmsearch run` gives each worker
    name = f"workers-{workers}-{time.time_ns()}"
    trials.study(ctx.workdir / "workers.db", name)  # created once, before the workers race to it
    spawn = mp.get_context("spawn")
    barrier = spawn.Barrier(workers + 1)
    procs = [
        spawn.Process(target=_worker, args=(str(ctx.workdir), str(ctx.device), ctx.quick, threads, per_worker, name,
                                            barrier))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=600)
    except threading.BrokenBarrierError:
        for p in procs:
            p.join(timeout=30)
        raise RuntimeError(f"a worker failed to start (exit codes {[p.exitcode for p in procs]})") from None
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"{len(bad)} worker(s) failed with exit codes {bad}")
    total = workers * per_worker
    log(f"workers: {workers} x {threads} threads, {total} children in {elapsed:.1f} s")
    return total / elapsed * 3600


def run(ctx: Context) -> list[Line]:
    trials.fixed_child_objective(ctx)  # train the reference and cache it before the workers start
    counts = [1, 2] if ctx.quick else [1, 2, 4, 8] if ctx.cuda else [1, 2, 4]
    per_worker = 2 if ctx.quick else 4
    rates = {n: _throughput(ctx, n, per_worker) for n in counts}
    cores = os.cpu_count() or 1
    where = "1 GPU" if ctx.cuda else f"{cores} CPU cores"
    value = ", ".join(f"{n} worker{'s' if n > 1 else ''} {r:.0f}/h ({r / rates[1]:.2f}x)" for n, r in rates.items())
    return [Line(f"worker_scaling_children_per_hour[workers per device, {where}]", value)]
