"""Real small trials for the study-level benchmarks: digits, the quickstart reference, SQLite storage."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

import gmsearch as gms
from benchmarks.common import Context
from gmsearch.nets.genome import Block, Genome
from gmsearch.search import mutations

#: A small fixed child for the worker benchmark: every trial costs the same.
SMALL_CHILD = Genome(
    (
        Block("conv", (-1,), out_channels=16, kernel_size=3),
        Block("pool", (0,), pool_type="max"),
        Block("conv", (1,), out_channels=32, kernel_size=3),
    ),
    head=(Block("fc", units=64),),
)

ATTACK = {"eps": 0.2, "alpha": 0.05, "steps": 10}


def objective(ctx: Context, *, epochs: int = 1) -> gms.GMObjective:
    """The real GM objective on digits (adversarial sets and reference gradients cached in the workdir)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return gms.GMObjective(
        ctx.digits(), reference=ctx.reference(), attack="pgd_linf", attack_params=ATTACK, epochs=epochs,
        device=ctx.device, cache_dir=ctx.workdir / "cache", seed=ctx.seed,
    )


def sampler(seed: int = 0) -> gms.NicheEvolutionSampler:
    """The evolution sampler with a budget that keeps children small enough for CPU benchmarks."""
    budget = mutations.SizeBudget(max_blocks=8, max_params=60_000, in_channels=1, num_classes=10, image_size=16)
    # epoch_schedule=None: each benchmark's objective decides the epochs
    return gms.NicheEvolutionSampler(population_size=3, n_children=2, seed=seed, budget=budget, epoch_schedule=None)


def study(path: Path, name: str, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return gms.create_study(study_name=name, storage=f"sqlite:///{path}", sampler=sampler)


def fixed_child_objective(ctx: Context, *, epochs: int = 1) -> Callable[[optuna.Trial], float]:
    """A child-training objective whose cost does not depend on the trial (for throughput)."""
    data, ref = ctx.digits(), ctx.reference()
    ref_grads = gms.reference_gradients(ref, data.train, cache_dir=ctx.workdir / "cache")

    def run(trial: optuna.Trial) -> float:
        torch.manual_seed(trial.number)
        net = gms.build(SMALL_CHILD, 1, 10, 16)
        gms.train(net, data, reference=ref, ref_grads=ref_grads, lam=1.0, epochs=epochs, device=ctx.device,
                  seed=trial.number, trial=trial)
        return gms.accuracy(net, data.val.x, data.val.y)

    return run


class CallTimer:
    """Adds up the wall time of the outermost timed calls made on the main thread."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._depth = 0
        import threading

        self._main = threading.main_thread()

    def wrap(self, group: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        import threading

        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not self._main or self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                self.seconds[group] = self.seconds.get(group, 0.0) + time.perf_counter() - t0
                self.calls[group] = self.calls.get(group, 0) + 1

        return timed

    def instrument(self, group: str, obj: Any, names: list[str] | None = None) -> None:
        """Time every public method of ``obj`` (or the ``names`` given), on this instance only."""
        for name in names or [n for n in dir(obj) if not n.startswith("_")]:
            attr = getattr(obj, name, None)
            if callable(attr) and not isinstance(attr, type):
                setattr(obj, name, self.wrap(group, attr))

    def total(self, *groups: str) -> float:
        return sum(self.seconds.get(g, 0.0) for g in groups)
