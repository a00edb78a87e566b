"""(6) Peak memory of a trial vs its model + data size, and memory over a study of many trials.

Runs in a fresh process so the peak is this study's own. A real study (the
evolution sampler, the GM objective on digits, SQLite): the peak over the
first trial above the memory in use before it, compared with the bytes of
the trial's data (splits, adversarial set, reference gradients) and its
largest model; then, after each trial and ``release_memory`` (which
``gms.train`` also calls when it ends), the memory in use and the number of
live tensors (a long study must not grow). CPU: resident set size
(``ru_maxrss`` for the peak; tracemalloc does not see PyTorch's allocations).
CUDA: ``torch.cuda.max_memory_allocated`` and ``memory_allocated``.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import queue as queue_module
import resource
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch

import gmsearch as gms
from benchmarks import trials
from benchmarks.common import Context, Line, at_most
from gmsearch.training.loop import release_memory

MB = 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _study(workdir: str, device: str, quick: bool, threads: int, queue: Any) -> None:
    try:
        _measure(workdir, device, quick, threads, queue)
    except BaseException as exc:  # tell the parent instead of leaving it waiting
        queue.put({"error": f"{type(exc).__name__}: {exc}"})
        raise


def _measure(workdir: str, device: str, quick: bool, threads: int, queue: Any) -> None:
    torch.set_num_threads(threads)
    ctx = Context(device=torch.device(device), quick=quick, workdir=Path(workdir))
    objective = trials.objective(ctx, epochs=1)
    data = ctx.digits()
    data_bytes = _tensor_bytes(
        data.train.x, data.train.y, data.val.x, data.val.y, objective.adversarial_val.x,
        *([objective.ref_grads] if objective.ref_grads is not None else []),
    )
    study = trials.study(Path(workdir) / "memory.db", "memory", trials.sampler(ctx.seed))
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else _rss()
    record: dict[str, Any] = {"after": [], "held": [], "tensors": [], "model": 0, "data": data_bytes,
                               "before": before}

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not record["after"]:
            record["peak"] = (torch.cuda.max_memory_allocated() if cuda else _peak_rss()) - before
        # no gc.collect() here: what GMObjective leaves behind, cyclic garbage included, is counted
        held = torch.cuda.memory_reserved() if cuda else _rss()
        release_memory(ctx.device)  # what GMObjective calls after each trial
        record["held"].append(held)
        record["after"].append(torch.cuda.memory_allocated() if cuda else _rss())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            record["tensors"].append(sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor)))
        genome = gms.genome_of(trial)
        params = gms.count_params(gms.build(genome, 1, 10, 16))
        record["model"] = max(record["model"], params * 4)

    study.optimize(objective, n_trials=5 if quick else 20, callbacks=[after_trial])
    queue.put(record)


def run(ctx: Context) -> list[Line]:
    trials.objective(ctx, epochs=1)  # cache the reference, adversarial set and gradients first
    spawn = mp.get_context("spawn")
    queue = spawn.Queue()
    proc = spawn.Process(target=_study, args=(str(ctx.workdir), str(ctx.device), ctx.quick, torch.get_num_threads(),
                                              queue))
    proc.start()
    record = None
    while record is None:
        try:
            record = queue.get(timeout=5)
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the memory study process died (exit code {proc.exitcode})") from None
    proc.join()
    if "error" in record:
        raise RuntimeError(f"the memory study failed: {record['error']}")
    after, held, tensors = record["after"], record["held"], record["tensors"]
    what = "CUDA allocated" if ctx.cuda else "RSS"
    size = record["model"] + record["data"]
    settle = min(2, len(after) - 1)  # allocator pools and caches fill during the first trials
    per_trial = (after[-1] - after[settle]) / MB / max(len(after) - 1 - settle, 1)
    return [
        Line(f"trial_peak_memory[{what}]",
             f"{record['peak'] / MB:.1f} MB above the study's baseline; model + data {size / MB:.2f} MB "
             f"({record['peak'] / size:.0f}x: activations of the double backward dominate)"),
        at_most(f"memory_growth_per_trial_over_{len(after)}_trials[{what}]", per_trial, 2.0, unit=" MB",
                fmt=".2f",
                note=f" (after trial {settle + 1}: {after[settle] / MB:.0f} MB, after the last: "
                f"{after[-1] / MB:.0f} MB; held before release_memory: up to {max(held) / MB:.0f} MB; "
                f"live tensors {tensors[settle]} -> {tensors[-1]})"),
        Line("live_tensors_after_each_trial", " ".join(map(str, tensors)), "constant: nothing retained",
             len(set(tensors[settle:])) == 1),
    ]
