"""Search cost: the paper's search (every child trains all its epochs) against NichePruner.

The same search (digits, population 4 x 2 children, 6 generations, the
paper's epoch schedule scaled down: ``base`` epochs, +``step`` every
``every`` generations) runs two ways for each seed:

- ``paper``: no stopping. It runs with ``NichePruner(shadow=True)``, which
  only records its decisions, so the same run tells what the pruner would
  have saved and how many stopped children would in fact have replaced
  their rival (missed replacements).
- ``niche``: ``NichePruner`` with the same settings, stopping children.

Printed per way: child-epochs trained, wall time, best and mean fitness of
the final population (mean +- std over seeds), and the shadow report.
Data, reference and adversarial sets are shared by every run (seed 0); the
seed changes the sampler's genomes and the children's initialisation.

Measured on 2 shared CPU cores (digits at 8x8, population 4 x 2 children,
6 generations, epochs 6 +1 every 2 generations, NichePruner(warmup=1,
margin=0.08), seeds 0-2; ``--image-size 8``)::

    paper  child-epochs 360.0 +- 0.0   wall 427 +- 112 s  best 0.811 +- 0.030  mean 0.643 +- 0.074
    niche  child-epochs 218.7 +- 17.6  wall 280 +- 44 s   best 0.818 +- 0.028  mean 0.632 +- 0.102
    shadow: would stop 94/144 children, save 422/1080 child-epochs;
            missed replacements 3/94 stopped (3.2%), 3/33 of all replacements
    child-epochs saved 39.3% (goal >= 50%: missed); best fitness +0.007 (within one std, 0.030)

Re-measured 2026-12-05 before and after NichePruner's bar took the rival's
final value too (``--seeds 3 --generations 3 --image-size 8 --ways
paper,niche``; load average 10-14, so no wall times)::

    paper          child-epochs 152.0 +- 0.0   best 0.804 +- 0.019  mean 0.554 +- 0.052
    niche before   child-epochs 104.3 +- 15.5  best 0.804 +- 0.019  mean 0.534 +- 0.074  (31.4% saved)
    niche after    child-epochs 105.0 +- 14.8  best 0.804 +- 0.019  mean 0.534 +- 0.074  (30.9% saved)
    shadow / --sweep on the paper curves: missed 3/42 stopped (7.1%) before, 3/39 (7.7%) after

Run::

    python benchmarks/search_cost.py --quick            # ~1-2 minutes on CPU
    python benchmarks/search_cost.py                    # the full size (long on CPU)
    python benchmarks/search_cost.py --curves c.json    # also keep every child's curve and its rival's
    python benchmarks/search_cost.py --sweep c.json     # replay pruning rules on saved curves (no training)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``gmsearch`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna
import torch

from gmsearch import data as datasets
from gmsearch.nets import references
from gmsearch.search import mutations
from gmsearch.search.objective import GMObjective
from gmsearch.search.pruners import NichePruner, learning_curves, shadow_report, would_prune_at
from gmsearch.search.sampler import EpochSchedule, NicheEvolutionSampler, n_trials_for
from gmsearch.search.schema import GENOME_KEY, PARENT_KEY
from gmsearch.search.selection import population
from gmsearch.search.study import create_study

#: L-inf PGD budget for grey digits (the quickstart's).
ATTACK = {"eps": 0.2, "alpha": 0.05, "steps": 10}


@dataclass(frozen=True)
class Size:
    """What one search looks like."""

    population: int = 4
    children: int = 2
    generations: int = 6
    epochs: int = 6
    epochs_step: int = 1
    epochs_every: int = 2
    image_size: int = 16
    reference_epochs: int = 20
    attack_steps: int = 10


QUICK = Size(population=3, children=2, generations=2, epochs=3, image_size=8, reference_epochs=3,
             attack_steps=5)


def _objective(
    size: Size, cache: Path, seed: int, *, inherit: bool = False, artifacts: Path | None = None
) -> GMObjective:
    data = datasets.load("digits", seed=0, device="cpu", image_size=size.image_size)
    ref = references.get("hand_a", data, epochs=size.reference_epochs, seed=0, device="cpu", cache_dir=cache)
    return GMObjective(
        data, reference=ref, attack="pgd_linf", attack_params={**ATTACK, "steps": size.attack_steps},
        lam=1.0, epochs=size.epochs, device="cpu", cache_dir=cache, seed=seed, inherit=inherit,
        artifact_store=artifacts if artifacts is not None else "auto",
    )


def run_search(size: Size, *, way: str, seed: int, workdir: Path, warmup: int, margin: float) -> dict[str, Any]:
    """One search; returns its cost, final population and (for ``paper``) the shadow report."""
    objective = _objective(size, workdir / "cache", seed, inherit=way == "inherit", artifacts=workdir / "artifacts")
    sampler = NicheEvolutionSampler(
        population_size=size.population, n_children=size.children, min_distance=4.0,
        mutations_per_child=(4, 5), generations=size.generations, seed=seed,
        epoch_schedule=EpochSchedule(base=size.epochs, step=size.epochs_step, every=size.epochs_every),
        budget=mutations.SizeBudget(max_blocks=12, max_params=200_000, in_channels=1, num_classes=10,
                                    image_size=size.image_size),
    )
    pruner = NichePruner(warmup=warmup, margin=margin, shadow=(way == "paper"))  # "inherit": niche + inheritance
    name = f"{way}-seed{seed}-{time.time_ns()}"
    study = create_study(study_name=name, storage=f"sqlite:///{workdir / 'search_cost.db'}",
                         sampler=sampler, pruner=pruner, heartbeat_interval=None)
    start = time.perf_counter()
    study.optimize(objective, n_trials=n_trials_for(size.generations, size.population, size.children))
    seconds = time.perf_counter() - start
    trials = [t for t in study.get_trials(deepcopy=False) if GENOME_KEY in t.system_attrs]
    children = [t for t in trials if t.user_attrs.get(PARENT_KEY) is not None]
    final = [t.value for t in population(study) if t.value is not None]
    return {
        "way": way, "seed": seed, "study": name, "seconds": seconds,
        "child_epochs": sum(len(t.intermediate_values) for t in children),
        "all_epochs": sum(len(t.intermediate_values) for t in trials),
        "children": len(children),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in children),
        "best": max(final), "mean": statistics.fmean(final), "population": final,
        "shadow": shadow_report(study),
        "curves": learning_curves(study),
    }


def _ms(values: list[float], fmt: str = ".3f") -> str:
    if len(values) < 2:
        return f"{values[0]:{fmt}}"
    return f"{statistics.fmean(values):{fmt}} +- {statistics.stdev(values):{fmt}}"


def summarise(results: list[dict[str, Any]]) -> list[str]:
    """Result lines per way, and the comparison with the goals."""
    lines = []
    by_way: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_way.setdefault(r["way"], []).append(r)
    for way, rs in by_way.items():
        lines.append(
            f"{way:6s} child-epochs {_ms([r['child_epochs'] for r in rs], '.1f')}  "
            f"wall {_ms([r['seconds'] for r in rs], '.0f')} s  "
            f"best {_ms([r['best'] for r in rs])}  mean {_ms([r['mean'] for r in rs])}  "
            f"pruned {sum(r['pruned'] for r in rs)}/{sum(r['children'] for r in rs)} children"
        )
    if "paper" in by_way:
        sh = [r["shadow"] for r in by_way["paper"]]
        stopped, missed = sum(s["stopped"] for s in sh), sum(s["missed"] for s in sh)
        reps = sum(s["replacements"] for s in sh)
        lines.append(
            f"shadow (on paper runs): would stop {stopped}/{sum(s['children'] for s in sh)} children, "
            f"save {sum(s['epochs_saved'] for s in sh)}/{sum(s['child_epochs'] for s in sh)} child-epochs; "
            f"missed replacements {missed}/{stopped} stopped ({missed / max(stopped, 1):.1%}; goal < 5%), "
            f"{missed}/{reps} of all replacements"
        )
    for way in ("niche", "inherit"):
        if "paper" not in by_way or way not in by_way:
            continue
        p = statistics.fmean(r["child_epochs"] for r in by_way["paper"])
        n = statistics.fmean(r["child_epochs"] for r in by_way[way])
        pb = [r["best"] for r in by_way["paper"]]
        nb = [r["best"] for r in by_way[way]]
        sd = statistics.stdev(pb) if len(pb) > 1 else 0.0
        diff = statistics.fmean(nb) - statistics.fmean(pb)
        lines.append(f"child-epochs saved by {way}: {1 - n / p:.1%} (goal >= 50%)")
        lines.append(f"best fitness {way} - paper: {diff:+.3f} (goal: within one paper std, {sd:.3f})")
    return lines


def sweep(rows: list[dict[str, Any]], warmups: list[int], margins: list[float]) -> list[str]:
    """Replay the NichePruner rule on saved curves: stopped losers, stopped winners, epochs saved."""
    winners = [r for r in rows if r["replaced"]]
    losers = [r for r in rows if not r["replaced"]]
    total = sum(len(r["curve"]) for r in rows)
    lines = [f"{len(rows)} children, {len(winners)} replaced their rival, {total} child-epochs",
             "warmup margin  losers-stopped  winners-stopped  epochs-saved"]
    for w in warmups:
        for m in margins:
            saved = 0
            hit = {True: 0, False: 0}
            for r in rows:
                at = would_prune_at(r, warmup=w, margin=m)
                if at is not None:
                    hit[r["replaced"]] += 1
                    saved += len(r["curve"]) - at
            lines.append(
                f"{w:6d} {m:6.2f}  {hit[False]:4d}/{len(losers)} {hit[False] / max(len(losers), 1):5.1%}  "
                f"{hit[True]:4d}/{len(winners)} {hit[True] / max(len(winners), 1):5.1%}  "
                f"{saved:5d} {saved / max(total, 1):5.1%}"
            )
    return lines


def gaps(rows: list[dict[str, Any]]) -> list[str]:
    """Rival minus child at each epoch, for children that replaced and those that lost (quantiles)."""
    lines = ["epoch  replaced: median [p10, p90] (min)      lost: median [p10, p90] (max)"]
    epochs = sorted({e for r in rows for e in r["curve"]})
    for e in epochs:
        cols = []
        for replaced in (True, False):
            g = []
            for r in rows:
                if r["replaced"] != replaced or e not in r["curve"] or not r["rival_curve"]:
                    continue
                rc = r["rival_curve"]
                rv = rc.get(e, rc[max(k for k in rc if k <= e)] if any(k <= e for k in rc) else None)
                if rv is not None:
                    g.append(rv - r["curve"][e])
            if len(g) >= 2:
                q = statistics.quantiles(g, n=10)
                extreme = min(g) if replaced else max(g)
                cols.append(f"{statistics.median(g):+.3f} [{q[0]:+.3f}, {q[-1]:+.3f}] ({extreme:+.3f}) n={len(g)}")
            else:
                cols.append("-")
        lines.append(f"{e:5d}  {cols[0]:38s} {cols[1]}")
    return lines


def _rows(path: Path) -> list[dict[str, Any]]:
    rows = json.loads(path.read_text())
    for r in rows:  # JSON keys are strings
        r["curve"] = {int(k): v for k, v in r["curve"].items()}
        r["rival_curve"] = {int(k): v for k, v in r["rival_curve"].items()}
    return [r for r in rows if r.get("way", "paper") == "paper"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small search (~1-2 minutes on CPU)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; quick: 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--ways", default="paper,niche,inherit",
                        help="comma-separated: paper, niche, inherit (niche + weight inheritance)")
    parser.add_argument("--population", type=int)
    parser.add_argument("--children", type=int)
    parser.add_argument("--generations", type=int)
    parser.add_argument("--epochs", type=int, help="epochs of generation 0 (the schedule's base)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--warmup", type=int, default=NichePruner().warmup)
    parser.add_argument("--margin", type=float, default=NichePruner().margin)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--workdir", type=Path, default=Path("search_cost_work"))
    parser.add_argument("--curves", type=Path, help="write every child's curve and its rival's to this JSON")
    parser.add_argument("--sweep", type=Path, help="only replay pruning rules on curves saved with --curves")
    args = parser.parse_args(argv)

    if args.sweep is not None:
        rows = _rows(args.sweep)
        print("\n".join(gaps(rows)))
        print("\n".join(sweep(rows, [0, 1, 2, 3], [0.0, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3])))
        return 0

    base = QUICK if args.quick else Size()
    overrides = {k: v for k, v in {
        "population": args.population, "children": args.children, "generations": args.generations,
        "epochs": args.epochs, "image_size": args.image_size,
    }.items() if v is not None}
    size = Size(**{**base.__dict__, **overrides})
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    for w in ways:
        if w not in ("paper", "niche", "inherit"):
            raise SystemExit(f"--ways: unknown way {w!r}; allowed: paper, niche, inherit (niche + weight inheritance)")
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("gmsearch").setLevel(logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"search: {size}; NichePruner(warmup={args.warmup}, margin={args.margin}); seeds {seeds}; "
          f"attack L-inf PGD {ATTACK | {'steps': size.attack_steps}}", flush=True)
    results = []
    for seed in range(args.first_seed, args.first_seed + seeds):
        for way in ways:
            r = run_search(size, way=way, seed=seed, workdir=args.workdir, warmup=args.warmup, margin=args.margin)
            results.append(r)
            print(f"  {way} seed {seed}: {r['child_epochs']} child-epochs, {r['seconds']:.0f} s, "
                  f"best {r['best']:.3f}, mean {r['mean']:.3f}, pruned {r['pruned']}/{r['children']}, "
                  f"shadow stopped {r['shadow']['stopped']} missed {r['shadow']['missed']}", flush=True)
            if args.curves is not None:
                args.curves.write_text(json.dumps(
                    [{**row, "way": x["way"], "seed": x["seed"]} for x in results for row in x["curves"]]
                ))
    print("\n".join(summarise(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
