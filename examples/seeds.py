"""The quickstart protocol over several seeds: Ref, Ref+GM and NE+GM as mean +- std.

One run of ``gmsearch quickstart`` is one draw: the seed fixes the data split,
the reference's initialisation, the adversarial sets, Ref+GM's initialisation
and the whole evolution, and two seeds can order Ref+GM and NE+GM differently.
This script runs the quickstart protocol (:func:`gmsearch.quickstart.run_quickstart`)
once per seed, each in its own fresh folder ``<workdir>/<protocol>/seed<s>``
(its own study, reference and caches), and prints

* mean +- sample std over the seeds of clean accuracy, adversarial accuracy
  (transferred from the seed's reference; white-box for Ref) and
  fitness = min(clean, adversarial), for Ref, Ref+GM and NE+GM;
* the per-seed numbers;
* the paired difference NE+GM minus Ref+GM (mean +- std over seeds) and a
  verdict: NE+GM beats Ref+GM on fitness only if the mean difference exceeds
  one std of the per-seed differences.

A rerun starts each seed's study afresh (its SQLite study and trial artifacts
are deleted; the content-hashed caches of the reference and adversarial sets
are reused). ``--reuse`` instead reads back seeds whose run already finished
in the same folder, so seeds can run side by side and be summarised after::

    python examples/seeds.py --seeds 1 & python examples/seeds.py --seeds 2 & python examples/seeds.py --seeds 0; wait
    python examples/seeds.py --seeds 0 1 2 --reuse --json seeds.json

Run::

    python examples/seeds.py --seeds 0 1 2                  # quickstart scale, ~5-15 min a seed on a CPU
    python examples/seeds.py --seeds 0 1 2 --generations 6  # a longer search
    python examples/seeds.py --quick --seeds 0 1            # smoke run (also GMSEARCH_QUICK=1)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

NETWORKS = ("Ref", "Ref+GM", "NE+GM")
METRICS = ("clean", "adv", "fitness")
MARGIN = "NE+GM beats Ref+GM on fitness by more than one std"
REVERSE = "Ref+GM beats NE+GM on fitness by more than one std"
NO_MARGIN = "no margin beyond one std"
ONE_SEED = "one seed: no std, no verdict"

# the quickstart's own defaults, and the --quick preset (seconds per seed)
FULL = {"image_size": 16, "generations": 3, "population_size": 4, "n_children": 2, "epochs": 8,
        "reference_epochs": 30, "attack_steps": 10, "max_params": 200_000}
QUICK = {"image_size": 8, "generations": 1, "population_size": 2, "n_children": 1, "epochs": 1,
         "reference_epochs": 3, "attack_steps": 3, "max_params": 20_000}


@dataclass(frozen=True)
class Score:
    """One network's numbers on one seed (fractions in ``[0, 1]``)."""

    clean: float
    adv: float
    fooling: float | None = None
    detail: str = ""

    @property
    def fitness(self) -> float:
        return min(self.clean, self.adv)

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (``n - 1``) of per-seed values."""

    mean: float
    std: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        vals = tuple(float(v) for v in values)
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan, vals)

    def text(self) -> str:
        return fmt_pct(self.mean) + ("" if math.isnan(self.std) else f" +- {100 * self.std:.2f}")


def fmt_pct(value: float) -> str:
    from gmsearch.evaluation.tables import percent

    return percent(value)


def protocol_tag(p: dict[str, int]) -> str:
    return (f"img{p['image_size']}_g{p['generations']}_p{p['population_size']}x{p['n_children']}"
            f"_e{p['epochs']}_ref{p['reference_epochs']}_steps{p['attack_steps']}")


def finished_rows(folder: Path, protocol: dict[str, int]) -> dict[str, Score] | None:
    """The rows of a finished run in ``folder`` (all its trials complete, its table stored), else None."""
    db = folder / "gmsearch_quickstart.db"
    if not db.exists():
        return None
    import optuna
    from optuna.trial import TrialState

    from gmsearch.report._html import load_baseline
    from gmsearch.search.sampler import n_trials_for

    try:
        study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{db.resolve()}")
    except KeyError:
        return None
    complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    stored = load_baseline(study)
    if stored is None or complete != n_trials_for(
        protocol["generations"], protocol["population_size"], protocol["n_children"]
    ):
        return None
    rows = {r.name: Score(r.clean_acc, r.adv_acc, r.fooling_rate, r.detail) for r in stored[1]}
    return {n: rows[n] for n in NETWORKS} if all(n in rows for n in NETWORKS) else None


def run_seed(
    seed: int, folder: Path, protocol: dict[str, int], device: str | None, *, reuse: bool = False
) -> tuple[dict[str, Score], float]:
    """One independent quickstart run: a fresh study in ``folder``; returns the three rows and its seconds.

    With ``reuse``, a run already finished in ``folder`` under the same protocol is read back instead.
    """
    if reuse and (rows := finished_rows(folder, protocol)) is not None:
        print(f"reusing the finished run in {folder}")
        return rows, 0.0
    from gmsearch.quickstart import run_quickstart

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gmsearch_quickstart.db").unlink(missing_ok=True)  # never resume: each seed is one fresh run
    shutil.rmtree(folder / "gmsearch_artifacts", ignore_errors=True)
    result = run_quickstart(workdir=folder, seed=seed, device=device, show_progress_bar=False, **protocol)
    found = {r.name: Score(r.clean_acc, r.adv_acc, r.fooling_rate, r.detail) for r in result.rows}
    missing = [n for n in NETWORKS if n not in found]
    if missing:
        raise RuntimeError(f"seed {seed}: the quickstart table lacks {missing} (rows: {list(found)})")
    return {n: found[n] for n in NETWORKS}, result.seconds


def summarize(per_seed: dict[int, dict[str, Score]]) -> dict[str, Any]:
    """Mean +- std per network and metric, the paired NE+GM - Ref+GM difference and the verdict."""
    seeds = list(per_seed)
    summary = {
        n: {m: Spread.of([per_seed[s][n].metric(m) for s in seeds]) for m in METRICS} for n in NETWORKS
    }
    diff = {
        m: Spread.of([per_seed[s]["NE+GM"].metric(m) - per_seed[s]["Ref+GM"].metric(m) for s in seeds])
        for m in METRICS
    }
    fit = diff["fitness"]
    if len(seeds) < 2:
        verdict = ONE_SEED
    elif fit.mean > fit.std:
        verdict = MARGIN
    elif -fit.mean > fit.std:
        verdict = REVERSE
    else:
        verdict = NO_MARGIN
    return {"summary": summary, "difference": diff, "verdict": verdict}


def report(per_seed: dict[int, dict[str, Score]], stats: dict[str, Any], title: str) -> str:
    """The three text tables (mean +- std, per seed, difference) and the verdict line."""
    from gmsearch.evaluation.tables import text_table

    seeds = list(per_seed)
    header = ["network", "clean acc", "adv acc", "fitness"]
    mean_rows = [[n, *(stats["summary"][n][m].text() for m in METRICS)] for n in NETWORKS]
    seed_rows = [
        [f"seed {s}", n, fmt_pct(sc.clean), fmt_pct(sc.adv), fmt_pct(sc.fitness),
         "-" if sc.fooling is None else fmt_pct(sc.fooling), sc.detail]
        for s in seeds for n, sc in per_seed[s].items()
    ]
    diff = stats["difference"]
    diff_rows = [[f"seed {s}", *(fmt_pct(diff[m].values[i]) for m in METRICS)] for i, s in enumerate(seeds)]
    diff_rows.append(["mean +- std", *(diff[m].text() for m in METRICS)])
    fit = diff["fitness"]
    spread = "" if math.isnan(fit.std) else f" +- {fit.std * 100:.2f}"
    return "\n\n".join([
        text_table(header, mean_rows, title=f"{title}\nmean +- sample std (percentage points) over seeds {seeds}"),
        text_table(["seed", "network", "clean acc", "adv acc", "fitness", "fooling", "detail"], seed_rows,
                   left=(0, 1, 6), title="per seed"),
        text_table(["NE+GM - Ref+GM", "clean acc", "adv acc", "fitness"], diff_rows,
                   title="paired difference NE+GM minus Ref+GM"),
        f"verdict: {stats['verdict']} (fitness difference {fit.mean * 100:+.2f}{spread} points, "
        f"{len(seeds)} seeds)",
    ])


def to_json(per_seed: dict[int, dict[str, Score]], stats: dict[str, Any], **extra: Any) -> dict[str, Any]:
    def spread(s: Spread) -> dict[str, Any]:
        return {"mean": s.mean, "std": None if math.isnan(s.std) else s.std, "values": list(s.values)}

    return {
        **extra,
        "seeds": list(per_seed),
        "per_seed": {
            str(s): {n: {**asdict(sc), "fitness": sc.fitness} for n, sc in rows.items()} for s, rows in per_seed.items()
        },
        "summary": {n: {m: spread(v) for m, v in ms.items()} for n, ms in stats["summary"].items()},
        "difference": {"NE+GM - Ref+GM": {m: spread(v) for m, v in stats["difference"].items()}},
        "verdict": stats["verdict"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default: 0 1 2 (a std needs two)")
    parser.add_argument("--generations", type=int, help="generations per seed (quickstart: 3)")
    parser.add_argument("--epochs", type=int, help="epochs per child and for Ref+GM (quickstart: 8)")
    parser.add_argument("--population", type=int, help="population size (quickstart: 4)")
    parser.add_argument("--children", type=int, help="children per candidate (quickstart: 2)")
    parser.add_argument("--reference-epochs", type=int, help="reference epochs (quickstart: 30)")
    parser.add_argument("--workdir", default="gmsearch_seeds", help="runs go to <workdir>/<protocol>/seed<s>")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke run (8x8, 1 generation of 2 x 1, 1 epoch); also GMSEARCH_QUICK=1")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (tiny nets: 1 is fastest)")
    parser.add_argument("--json", type=Path, help="write the numbers to this JSON file")
    parser.add_argument("--reuse", action="store_true",
                        help="read back seeds whose run already finished in the workdir (same protocol) instead of "
                             "rerunning them, e.g. seeds run in parallel by separate invocations")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must be distinct: each seed is one independent run")
    quick = args.quick or os.environ.get("GMSEARCH_QUICK", "") not in ("", "0")
    protocol = dict(QUICK if quick else FULL)
    for key, value in (("generations", args.generations), ("epochs", args.epochs),
                       ("population_size", args.population), ("n_children", args.children),
                       ("reference_epochs", args.reference_epochs)):
        if value is not None:
            protocol[key] = value
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    root = Path(args.workdir) / protocol_tag(protocol)
    start = time.perf_counter()
    per_seed: dict[int, dict[str, Score]] = {}
    seconds: dict[int, float] = {}
    for seed in args.seeds:
        print(f"=== seed {seed} ({root / f'seed{seed}'}) ===", flush=True)
        per_seed[seed], seconds[seed] = run_seed(
            seed, root / f"seed{seed}", protocol, args.device, reuse=args.reuse
        )
    stats = summarize(per_seed)
    title = (
        f"quickstart protocol over {len(args.seeds)} seeds: digits {protocol['image_size']}x{protocol['image_size']}, "
        f"reference hand_a {protocol['reference_epochs']} epochs, population {protocol['population_size']} x "
        f"{protocol['n_children']} children, {protocol['generations']} generations, {protocol['epochs']} epochs, "
        f"pgd_linf {protocol['attack_steps']} steps; fitness = min(clean, adv)"
    )
    print()
    print(report(per_seed, stats, title))
    total = time.perf_counter() - start
    print(f"done in {total:.0f} s (" + ", ".join(f"seed {s}: {t:.0f} s" for s, t in seconds.items()) + ")")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = to_json(per_seed, stats, protocol=protocol, quick=quick,
                          seconds={str(s): t for s, t in seconds.items()}, total_seconds=total)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"numbers: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
