"""(9) Children per hour on the paper's reduced CIFAR-10, and the projected wall time of the paper-scale search.

A child as the search trains one: ``hand_a``'s architecture, GM training
(``lam=1``) against a frozen ``hand_a`` reference with cached reference
gradients, then clean and adversarial validation accuracy (the adversarial
set is made once per search and not counted). Its time is measured per
epoch and per evaluation, then projected:

- children per hour at the paper's first-generation 20 epochs, one worker;
- on CUDA, the same child with its training step captured in a CUDA graph
  (``cuda_graph=True``): the epoch speed-up, and the capture's cost in
  replayed steps against the steps of a 20-epoch child;
- the paper-scale search (population 4, 2 children per candidate, 50
  generations, 20 epochs +5 every 10 generations: 12,080 child-epochs) on one
  worker, the issue's goal being 15 minutes on one H100-class GPU.
  ``--only workers`` measures how several workers per device scale this.

Data: the reduced CIFAR-10 file of this project's shared data folder when
it is there (``GMSEARCH_BENCH_CIFAR`` names another), else random images of
the same shape (timings only). The reference is left untrained: the step's
cost does not depend on its weights.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import torch

import gmsearch as gms
from benchmarks.common import Context, Line, at_most, log, sync
from gmsearch.data import Dataset, Split

GOAL_MINUTES = 15.0
POPULATION, CHILDREN, GENERATIONS = 4, 2, 50


def _cifar(ctx: Context) -> tuple[Dataset, str]:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_reduced.npz"
    path = Path(os.environ.get("GMSEARCH_BENCH_CIFAR", default))
    if path.is_file():
        data = gms.datasets.load("npz", path=str(path), seed=ctx.seed, device=ctx.device)
        return data, f"reduced CIFAR-10 ({len(data.train.y)} train images)"
    data = ctx.synthetic(9_000, (3, 32, 32), name="cifar-shaped")
    return data, f"random CIFAR-shaped images ({len(data.train.y)}; {path} not found)"


def paper_child_epochs() -> int:
    """Child-epochs of the paper's search: the initial candidates plus 50 generations of children."""
    schedule = gms.EpochSchedule()
    children = sum(POPULATION * CHILDREN * schedule.epochs(g) for g in range(1, GENERATIONS + 1))
    return POPULATION * schedule.epochs(0) + children


def run(ctx: Context) -> list[Line]:
    data, what = _cifar(ctx)
    def head(split: Split, k: int) -> Split:
        return Split(split.x[:k], split.y[:k])

    def sliced(n: int) -> Dataset:
        return Dataset(name=data.name, train=head(data.train, n), val=head(data.val, 256),
                       test=head(data.test, 256), num_classes=data.num_classes, class_names=data.class_names)

    full_train = len(data.train.y)
    if ctx.quick:  # a slice: the per-epoch time is scaled to the whole training split below
        data = sliced(512)
    torch.manual_seed(ctx.seed)
    c, h, _ = data.input_shape
    reference = gms.build(gms.zoo.genome("hand_a"), c, data.num_classes, h).to(ctx.device).eval()
    t0 = time.perf_counter()
    ref_grads = gms.reference_gradients(reference, data.train)
    ref_seconds = time.perf_counter() - t0
    child = gms.build(gms.zoo.genome("hand_a"), c, data.num_classes, h).to(ctx.device)
    epochs = 3 if ctx.cuda and not ctx.quick else 1
    warm = sliced(min(512, len(data.train.y)))  # warm-up: kernels, cudnn autotuning, allocator
    gms.train(copy.deepcopy(child), warm, reference=reference, ref_grads=ref_grads[: len(warm.train.y)], lam=1.0,
              epochs=1, device=ctx.device, seed=ctx.seed)
    sync(ctx.device)

    def epoch_seconds(**kwargs: Any) -> tuple[float, gms.TrainResult]:
        """Seconds per epoch over the whole training split, and the training's result."""
        t0 = time.perf_counter()
        out = gms.train(copy.deepcopy(child), data, reference=reference, ref_grads=ref_grads, lam=1.0,
                        epochs=epochs, device=ctx.device, seed=ctx.seed, **kwargs)
        sync(ctx.device)
        return (time.perf_counter() - t0) / epochs * full_train / len(data.train.y), out

    per_epoch, _ = epoch_seconds()
    net = copy.deepcopy(child)
    t0 = time.perf_counter()
    gms.accuracy(net, data.val.x, data.val.y)
    gms.accuracy(net, data.val.x, data.val.y)  # the adversarial set has the validation split's size
    sync(ctx.device)
    evaluation = time.perf_counter() - t0
    where = torch.cuda.get_device_name(ctx.device) if ctx.cuda else "CPU"
    capture = 0.0
    lines: list[Line] = []
    if ctx.cuda:  # the same child with its step captured in a CUDA graph (capture counted once per child)
        graphed_epoch, out = epoch_seconds(cuda_graph=True)
        summary = out.cuda_graph or {}
        if summary.get("failed") or summary.get("capture_seconds") is None:
            log(f"children: CUDA graph not used ({summary.get('failed')})")
        else:
            capture = float(summary["capture_seconds"])
            graphed_epoch -= capture / epochs
            steps = -(-full_train // 128)
            lines += [
                Line(f"cuda_graph_epoch_speedup[hand_a GM epoch, {where}]",
                     f"{per_epoch / graphed_epoch:.2f}x ({per_epoch:.2f} s eager, {graphed_epoch:.2f} s replayed)"),
                Line("cuda_graph_capture_cost[one capture per child]",
                     f"{capture:.3f} s = {capture / (graphed_epoch / steps):.0f} replayed steps of the "
                     f"{20 * steps} steps of a 20-epoch child"),
            ]
            if graphed_epoch < per_epoch:
                per_epoch = graphed_epoch
                where += ", CUDA graph"
            else:
                capture = 0.0
    child_seconds = capture + 20 * per_epoch + evaluation
    per_hour = 3600 / child_seconds
    n_children = POPULATION * (1 + CHILDREN * GENERATIONS)
    search_minutes = (paper_child_epochs() * per_epoch + n_children * (evaluation + capture)) / 60
    log(f"children: {what}; GM epoch {per_epoch:.2f} s, evaluation {evaluation:.2f} s, "
        f"reference gradients once {ref_seconds:.2f} s")
    return [
        *lines,
        Line(f"children_per_hour[reduced CIFAR-10, hand_a child, 20 epochs, 1 worker, {where}]",
             f"{per_hour:.1f} ({child_seconds:.1f} s per child: {per_epoch:.2f} s per GM epoch)"),
        at_most(f"paper_search_projected_minutes[{paper_child_epochs()} child-epochs, 1 worker, {where}]",
                search_minutes, GOAL_MINUTES, unit=" min", fmt=".0f",
                note=" (goal on one H100-class GPU; more workers per device: --only workers)"),
    ]
