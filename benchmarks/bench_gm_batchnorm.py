"""(10) BatchNorm in the GM term: ``gm_batchnorm`` = batch, running or detached, on the quickstart protocol.

In the GM step the child is in train mode, so with ``batch`` (the default)
row i of its input gradient also flows through the batch mean and variance
(terms through the other samples), while the reference's cached gradients
and the attacks' gradients are taken in eval mode. ``running`` takes the GM
term's input gradient with the running statistics (eval-mode BatchNorm, one
more forward pass); ``detached`` keeps the batch statistics but holds them
constant in the input gradient (sample i's own gradient). See
:mod:`gmsearch.training.gm_loss`.

Protocol (the quickstart's, from ``config.py``'s defaults): digits at 16x16,
data seed s; the reference ``hand_a`` trained 30 epochs (cached); L-inf PGD
(eps 0.2, 10 steps) from the reference on the test split; Ref+GM = a fresh
copy of the reference's architecture trained with GM (lam 1) for the
quickstart's 8 epochs with each option, same initialisation and batch order.
Reported on the test split: clean and transferred adversarial accuracy, the
cosine of the trained child's eval-mode input gradients with the
reference's (what transfer sees), and training CPU seconds per step; mean
+- sd over seeds and the paired difference of each option from ``batch``.

Run alone: ``python benchmarks/bench_gm_batchnorm.py [--quick] [--seeds 0,1,2] [--references hand_a,hand_b]``
(about 10 CPU minutes for 3 seeds, one thread; ``--jobs 3`` runs the seeds side by side; ``--quick``: a
smoke run, one seed, 1 epoch). ``benchmarks/run.py --only gm_batchnorm`` runs it on the CPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``gmsearch`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import Context, Line, log, new_workdir
from gmsearch import attacks, config, pipeline
from gmsearch.attacks import adversarial_set
from gmsearch.evaluation import accuracy
from gmsearch.search.baselines import reference_architecture
from gmsearch.training import gm_loss
from gmsearch.training.loop import reference_gradients, train

MODES = gm_loss.BATCHNORM_MODES


def quickstart_config(seed: int, reference: str, cache: Path, *, reference_epochs: int) -> config.RunConfig:
    """The quickstart's preset (``gmsearch/quickstart.py``) for one seed and reference."""
    return config.parse({
        "seed": seed, "device": "cpu",
        "data": {"name": "digits", "image_size": 16},
        "reference": {"name": reference, "epochs": reference_epochs},
        "attack": {"name": "pgd_linf", "params": {"steps": 10}},
        "training": {"lam": 1.0},
        "study": {"cache_dir": str(cache)},
    })


def measure_seed(
    seed: int, reference_name: str, cache: Path, *, epochs: int, reference_epochs: int
) -> dict[str, dict[str, float]]:
    """Train Ref+GM with each option for one seed; per option: clean, adv, cos, step seconds."""
    cfg = quickstart_config(seed, reference_name, cache, reference_epochs=reference_epochs)
    data = pipeline.load_data(cfg, device="cpu")
    ref = pipeline.make_reference(cfg, data, device="cpu")
    attack = attacks.create(cfg.attack.name, **pipeline.attack_params(cfg, data.input_shape))
    adv = adversarial_set(ref, data.test.x, data.test.y, attack, cache_dir=cache, tag="test")
    ref_grads = reference_gradients(ref, data.train, cache_dir=cache)
    test_ref_grad = gm_loss.input_gradients(ref, data.test.x, data.test.y)
    steps = epochs * sum(1 for i in range(0, len(data.train), cfg.training.batch_size)
                         if len(data.train) - i >= 2)
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        net = reference_architecture(ref, data, seed=seed + 1)  # the Ref+GM row's builder, the same init per option
        t0 = time.process_time()
        train(net, data, reference=ref, lam=cfg.training.lam, epochs=epochs, batch_size=cfg.training.batch_size,
              device="cpu", seed=seed + 1, ref_grads=ref_grads, gm_batchnorm=mode, log=lambda _: None)
        seconds = time.process_time() - t0
        net.eval()
        cos = gm_loss.cosine_per_sample(gm_loss.input_gradients(net, data.test.x, data.test.y), test_ref_grad)
        out[mode] = {
            "clean": accuracy(net, data.test.x, data.test.y), "adv": accuracy(net, adv.x, adv.y),
            "cos": float(cos.mean()), "step_ms": 1000 * seconds / steps,
        }
        log(f"{reference_name} seed {seed} {mode:8s} " + " ".join(f"{k} {v:.4f}" for k, v in out[mode].items()))
    return out


def _mean_sd(values: list[float], scale: float, fmt: str) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * scale:{fmt}} +- {sd * scale:{fmt}}"


def summarise(reference_name: str, runs: dict[int, dict[str, dict[str, float]]]) -> list[Line]:
    """Mean +- sd per option, and each option's paired difference from ``batch`` per seed."""
    lines = []
    seeds = sorted(runs)
    metrics: tuple[tuple[str, float, str, str], ...] = (
        ("clean", 100, ".1f", "%"), ("adv", 100, ".1f", "%"), ("cos", 1, ".3f", ""), ("step_ms", 1, ".1f", " ms"),
    )
    for key, scale, fmt, unit in metrics:
        for mode in MODES:
            values = [runs[s][mode][key] for s in seeds]
            lines.append(Line(f"gm_batchnorm_{key}[{reference_name},{mode}]", _mean_sd(values, scale, fmt) + unit,
                              f"mean +- sd over seeds {','.join(map(str, seeds))}"))
        for mode in MODES[1:]:
            diffs = [(runs[s][mode][key] - runs[s]["batch"][key]) * scale for s in seeds]
            per_seed = ", ".join(f"{d:+{fmt}}" for d in diffs)
            lines.append(Line(f"gm_batchnorm_{key}_diff[{reference_name},{mode}-batch]", f"{per_seed}{unit}",
                              "paired, per seed"))
    return lines


def _measure_seed_alone(seed: int, name: str, cache: Path, epochs: int, reference_epochs: int
                        ) -> dict[str, dict[str, float]]:
    torch.set_num_threads(1)  # one thread per seed: process CPU time stays a per-step cost
    return measure_seed(seed, name, cache, epochs=epochs, reference_epochs=reference_epochs)


def measure(*, seeds: list[int], references: list[str], epochs: int, reference_epochs: int,
            cache: Path, jobs: int = 1) -> list[Line]:
    """Every (reference, seed) run, ``jobs`` processes at a time (one thread each), then the summary lines."""
    tasks = [(s, name, cache, epochs, reference_epochs) for name in references for s in seeds]
    if jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_measure_seed_alone, *zip(*tasks, strict=True)))
    else:
        results = [measure_seed(s, n, c, epochs=e, reference_epochs=r) for s, n, c, e, r in tasks]
    lines: list[Line] = []
    for name in references:
        runs = {t[0]: out for t, out in zip(tasks, results, strict=True) if t[1] == name}
        lines += summarise(name, runs)
    return lines


def run(ctx: Context) -> list[Line]:
    """``benchmarks/run.py``'s entry: CPU only (the accuracies do not depend on the device)."""
    torch.manual_seed(ctx.seed)
    if ctx.quick:
        return measure(seeds=[0], references=["hand_a"], epochs=1, reference_epochs=2, cache=ctx.workdir / "cache")
    return measure(seeds=[0, 1, 2], references=["hand_a"], epochs=8, reference_epochs=30,
                   cache=ctx.workdir / "cache")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: one seed, 1 epoch, a 2-epoch reference")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated data/training seeds")
    parser.add_argument("--references", default="hand_a", help="comma-separated references (hand_a,hand_b)")
    parser.add_argument("--cache-dir", default=None, help="cache of references and adversarial sets")
    parser.add_argument("--jobs", type=int, default=1, help="seeds measured at once, one process (thread) each")
    args: Any = parser.parse_args(argv)
    torch.set_num_threads(1)
    cache = Path(args.cache_dir) if args.cache_dir else new_workdir() / "cache"
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    refs = [r.strip() for r in args.references.split(",") if r.strip()]
    start = time.perf_counter()
    lines = measure(seeds=seeds, references=refs, epochs=1 if args.quick else 8,
                    reference_epochs=2 if args.quick else 30, cache=cache, jobs=args.jobs)
    for line in lines:
        print(line, flush=True)
    print(f"# {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
