"""Shared pieces of the benchmarks: the run context, clocks, interleaved timing and result lines."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import gmsearch as gms
from gmsearch.data import Dataset, Split


@dataclass
class Context:
    """What every benchmark gets: device, mode, a scratch folder and shared, lazily built inputs."""

    device: torch.device
    quick: bool
    workdir: Path
    seed: int = 0
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def digits(self) -> Dataset:
        """scikit-learn's real digits at 1x16x16 (the quickstart data), on the device."""
        if "digits" not in self.cache:
            self.cache["digits"] = gms.datasets.load("digits", seed=self.seed, device=self.device)
        return self.cache["digits"]

    def reference(self) -> torch.nn.Module:
        """The quickstart reference ``hand_a`` trained briefly on digits (cached on disk)."""
        if "reference" not in self.cache:
            epochs = 2 if self.quick else 5
            self.cache["reference"] = gms.references.get(
                "hand_a", self.digits(), epochs=epochs, seed=self.seed, device=self.device,
                cache_dir=self.workdir / "cache",
            )
        return self.cache["reference"]

    def synthetic(self, n: int, shape: tuple[int, int, int], name: str = "synthetic") -> Dataset:
        """CIFAR-shaped random images and labels (timings only: nothing is learnt from them)."""
        key = f"synthetic-{n}-{shape}"
        if key not in self.cache:
            g = torch.Generator().manual_seed(self.seed)
            n_val = max(n // 10, 128)

            def split(k: int) -> Split:
                return Split(torch.rand(k, *shape, generator=g), torch.randint(0, 10, (k,), generator=g))

            data = Dataset(name=name, train=split(n), val=split(n_val), test=split(n_val), num_classes=10,
                           class_names=tuple(str(i) for i in range(10)))
            self.cache[key] = data.to(self.device)
        return self.cache[key]


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="gmsearch-bench-"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> Callable[[], float]:
    """Process CPU time on CPU (robust to other jobs sharing the cores), wall time on CUDA."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def interleaved(
    fns: dict[str, Callable[[], Any]], *, device: torch.device, repeats: int, inner: int = 1, warmup: int = 1,
    timer: Callable[[], float] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each function, timed in turns (A B C A B C ...) so drift hits all alike."""
    now = timer or clock(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = now()
            for _ in range(inner):
                fn()
            sync(device)
            samples[name].append((now() - t0) / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


@dataclass
class Line:
    """One result: ``NAME: value (target)``, with MISS and the ratio to the target when missed."""

    name: str
    value: str
    target: str = "info"
    ok: bool | None = None
    miss_by: str = ""

    def __str__(self) -> str:
        text = f"{self.name}: {self.value} ({self.target})"
        if self.ok is False:
            text += f" MISS{' by ' + self.miss_by if self.miss_by else ''}"
        return text


def at_most(name: str, value: float, limit: float, unit: str = "x", fmt: str = ".2f", note: str = "") -> Line:
    ok = value <= limit
    return Line(name, f"{value:{fmt}}{unit}{note}", f"<= {limit:g}{unit}", ok,
                "" if ok else f"{value / limit:.2f}x the target")


def at_least(name: str, value: float, limit: float, unit: str = "x", fmt: str = ".2f", note: str = "") -> Line:
    ok = value >= limit
    return Line(name, f"{value:{fmt}}{unit}{note}", f">= {limit:g}{unit}", ok,
                "" if ok else f"{value / limit:.2f}x the target")


def log(message: str) -> None:
    """Progress on stderr; result lines go to stdout."""
    print(f"  .. {message}", file=sys.stderr, flush=True)
