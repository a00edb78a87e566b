"""The README's transfer matrix: ``gmsearch evaluate`` on one search per seed, mean +- sd over seeds.

For each seed the study named by ``--study`` (``{seed}`` is replaced, e.g.
``cmp-digits-niche-s{seed}``: the niche searches ``gmsearch compare`` ran)
is evaluated with :func:`gmsearch.evaluate_transfer` (its best candidate,
NE+GM, against Ref, Ref+GM and HE+GM, on every source x attack set; sets and
sources are cached, so a rerun only reads). Printed: one row per (source,
attack) pair and the rows worst / all / clean / own white-box PGD, each
cell the mean +- sd over seeds of that network's accuracy; then NE+GM minus
each baseline on worst and all, paired over seeds, with the one-sided 95%
lower bound (paired t) and the seeds on which NE+GM is ahead.

Sources may name ``{seed}`` too, e.g. ``study:cmp-digits-random-s{seed}``:
the best network random search found against the same reference.

Run (the README's matrix; the searches come from ``gmsearch compare benchmarks/compare_digits.toml
--seeds 0-2``, whose storage is ``benchmarks/compare_digits.db``)::

    python benchmarks/transfer_matrix.py --storage sqlite:///benchmarks/compare_digits.db \\
        --study 'cmp-digits-niche-s{seed}' --seeds 0-2 --images 200
    python benchmarks/transfer_matrix.py --quick --storage ... --study NAME --seeds 0   # the test's smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import optuna

import gmsearch as gms
from gmsearch.evaluation.compare import paired_stats, parse_seeds
from gmsearch.evaluation.tables import text_table
from gmsearch.report.evaluate import TransferEvaluation

#: The README's sources and attacks: the reference, a slightly robust one, two zoo networks, their ensemble and
#: random search's best network against the same reference; three MI-FGSM variants, BSR and SGM. (ResNet-18
#: at 16x16 trains 75 s an epoch and takes minutes per attack on the shared 2-core machine: add it with
#: --sources where there is time.)
SOURCES = ("reference", "reference_at", "squeezenet1_1", "hand_b", "ensemble:squeezenet1_1+hand_b",
           "study:cmp-digits-random-s{seed}")
ATTACKS = ("mi_fgsm", "vmi_fgsm", "ti_fgsm", "bsr", "sgm")
ROLES = ("Ref", "Ref+GM", "HE+GM", "NE+GM")


def _role(network: str) -> str:
    return "NE+GM" if network.startswith("NE+GM") else network


def _cell(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    sd = f" +- {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{100 * mean:.1f}{sd}"


def aggregate(results: Sequence[TransferEvaluation]) -> dict[str, Any]:
    """Per role and row (each pair common to every seed, then worst/all/clean/white-box): values over seeds."""
    pairs = [p for p in results[0].pairs if all(p in r.pairs for r in results)]
    rows: dict[str, dict[str, list[float]]] = {}
    for r in results:
        for n, network in enumerate(r.networks):
            role = _role(network)
            values = {p: r.acc[n][r.pairs.index(p)] for p in pairs}
            values |= {"worst": min(values.values()), "all": r.all[n], "clean": r.clean[n],
                       "white-box pgd": r.white_box[n]}
            for row, v in values.items():
                rows.setdefault(row, {}).setdefault(role, []).append(v)
    # "all" over the common pairs: exact when every seed has the same pairs (the stored value is per seed's pairs)
    return {"pairs": pairs, "rows": rows, "complete": all(len(r.pairs) == len(pairs) for r in results)}


def lines(table: dict[str, Any], seeds: Sequence[int], seconds: float) -> list[str]:
    rows = table["rows"]
    out = [text_table(["set (source/attack)", *ROLES], [[row, *(_cell(rows[row][role]) for role in ROLES)]
                                                        for row in rows],
                      title=f"adversarial accuracy (%), test split, mean +- sd over seeds {seeds}")]
    if not table["complete"]:
        out.append("(some seeds had more pairs than the common ones shown; their 'all' covers those too)")
    out.append("NE+GM minus baseline, paired over seeds (>= one-sided 95% lower bound, paired t; seeds ahead):")
    for base in ("Ref+GM", "HE+GM"):
        cells = []
        for row in ("worst", "all"):
            st = paired_stats(rows[row]["NE+GM"], rows[row][base])
            low = "n/a" if st["lower95"] is None else f"{100 * st['lower95']:+.1f}"
            cells.append(f"{row} {100 * st['mean_diff']:+.1f} (>= {low}, {st['wins']}/{st['n']})")
        out.append(f"  vs {base:<7} " + "; ".join(cells))
    out.append(f"{len(seeds)} evaluation(s) in {seconds:.0f} s")
    return out


def templated(result: TransferEvaluation, names: dict[str, str]) -> TransferEvaluation:
    """``result`` with each pair's source named as given (``study:x-s{seed}``), so seeds line up."""
    pairs = []
    for pair in result.pairs:
        source, _, attack = pair.rpartition("/")
        pairs.append(f"{names.get(source, source)}/{attack}")
    return dataclasses.replace(result, pairs=tuple(pairs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True, help="study name; {seed} is replaced by each seed")
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES))
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    parser.add_argument("--source-epochs", type=int, default=None, help="epochs of each trained source "
                                                                        "(default the reference's)")
    parser.add_argument("--images", type=int, default=None, help="the first N test images (default all)")
    parser.add_argument("--quick", action="store_true", help="gmsearch evaluate --quick for each seed")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = parse_seeds(args.seeds)
    start = time.perf_counter()
    results = []
    for seed in seeds:
        study = args.study.format(seed=seed)
        sources = [s.format(seed=seed) for s in args.sources]
        print(f"seed {seed}: evaluating {study}", flush=True)
        result = gms.evaluate_transfer(args.storage, study, sources=sources, attack_names=args.attacks,
                                       quick=args.quick, source_epochs=args.source_epochs,
                                       n_images=args.images, echo=lambda line: print(f"  {line}", flush=True))
        results.append(templated(result, dict(zip(sources, args.sources, strict=True))))
    for line in lines(aggregate(results), seeds, time.perf_counter() - start):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
