"""The numbers of ``gmsearch compare``: statistics over seeds, best-so-far bands, the summary and its printout.

Pure functions of stored results (no training, no storage), so a comparison's table can be rebuilt from
``gmsearch:compare`` and tested by hand computation.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

#: The way the others are compared with by default, the test metrics, and the fixed rows of each seed.
BASE_WAY = "niche"
METRICS = ("clean", "adv", "fitness")
FIXED_ROWS = ("Ref", "HE+GM")


# --- statistics (pure) ----------------------------------------------------------------------------------------


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    if not values:
        raise ValueError("mean_sd of no values")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired_stats(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``a`` against ``b``, paired by position (seed): the mean of ``a - b``, its sample sd, the one-sided 95%
    lower bound ``mean - t.ppf(0.95, n - 1) * sd / sqrt(n)`` (paired t; None for one pair) and how many pairs
    ``a`` wins strictly (``wins`` of ``n``)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_stats needs two equally long, non-empty sequences, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean, sd = mean_sd(diffs)
    lower = None
    if sd is not None:
        from scipy.stats import t

        lower = mean - float(t.ppf(0.95, n - 1)) * sd / math.sqrt(n)
    return {"mean_diff": mean, "sd": sd, "lower95": lower, "wins": sum(d > 0 for d in diffs), "n": n}


# --- curves ---------------------------------------------------------------------------------------------------


def epochs_to_reach(curve: Sequence[Sequence[float]], target: float) -> float | None:
    """The child-epochs after which a best-so-far ``curve`` first reaches ``target`` (None: never)."""
    return next((x for x, y in curve if y >= target), None)


def band(curves: Sequence[Sequence[Sequence[float]]], *, points: int = 50) -> dict[str, list[float]]:
    """Step curves (``[x, y]`` points) of several seeds on one grid of x: their mean, lowest and highest y
    (a grid point before a curve's first point is left out of that curve)."""
    xs = [p[0] for c in curves for p in c]
    if not xs:
        return {"x": [], "mean": [], "low": [], "high": []}
    top = max(xs)
    grid = sorted({top * (i + 1) / points for i in range(points)} | set(xs))
    out: dict[str, list[float]] = {"x": [], "mean": [], "low": [], "high": []}
    for x in grid:
        ys = [next((p[1] for p in reversed(c) if p[0] <= x), None) for c in curves]
        seen = [y for y in ys if y is not None]
        if seen:
            out["x"].append(x)
            out["mean"].append(statistics.fmean(seen))
            out["low"].append(min(seen))
            out["high"].append(max(seen))
    return out


# --- summary --------------------------------------------------------------------------------------------------


def margins_summary(margins: Sequence[Sequence[float]], noise_sd: float | None) -> dict[str, Any]:
    """The fitness differences that decided a niche search's replacements (child minus the candidate it
    replaced, all seeds pooled): how many per seed, their median, and the share smaller than ``noise_sd`` (the
    fitness noise of one genome, so a replacement that a retraining could have reversed)."""
    pooled = [m for ms in margins for m in ms]
    if not pooled:
        return {"per_seed": 0.0, "median": None, "under_noise": None}
    under = None if noise_sd is None else sum(m < noise_sd for m in pooled) / len(pooled)
    return {"per_seed": len(pooled) / len(margins), "median": statistics.median(pooled), "under_noise": under}


def summarize(ways: Sequence[str], seeds: Sequence[int], runs: dict[str, dict[str, Any]],
              fixed: dict[str, Any], *, base: str = BASE_WAY) -> dict[str, Any]:
    """Means, sds, paired statistics (``base`` against each other way) and curves of per-way/seed runs (keys:
    ways, seeds as strings)."""
    keys = [str(s) for s in seeds]
    summary: dict[str, dict[str, Any]] = {}
    for way in ways:
        rs = [runs[way][k] for k in keys]
        summary[way] = {m: list(mean_sd([r["test"][m] for r in rs])) for m in METRICS}
        summary[way]["child_epochs"] = list(mean_sd([float(r["child_epochs"]) for r in rs]))
        summary[way]["seconds"] = list(mean_sd([r["search_seconds"] + r["retrain_seconds"] for r in rs]))
        summary[way]["val_fitness"] = list(mean_sd([r["val_fitness"] for r in rs]))
        summary[way]["lucky_gap"] = list(mean_sd([r["lucky_gap"] for r in rs]))
        noise = [r["val_noise_sd"] for r in rs if r.get("val_noise_sd") is not None]
        summary[way]["val_noise_sd"] = statistics.fmean(noise) if noise else None
        if any(r.get("margins") for r in rs):  # a way that replaces candidates (niche and its variants)
            summary[way]["margins"] = margins_summary([r.get("margins") or [] for r in rs],
                                                      summary[way]["val_noise_sd"])
        replays = [r["prune_replay"] for r in rs if r.get("prune_replay")]
        if replays:  # a niche way: what NichePruner would have done to it, seeds pooled
            summary[way]["prune_replay"] = {k: sum(r[k] for r in replays) for k in replays[0]}
    for name in FIXED_ROWS:
        summary[name] = {m: list(mean_sd([fixed[k][name][m] for k in keys])) for m in METRICS}
    stats = {}
    if base in ways:
        for way in ways:
            if way != base:
                stats[way] = {m: paired_stats([runs[base][k]["test"][m] for k in keys],
                                              [runs[way][k]["test"][m] for k in keys]) for m in METRICS}
    curves = {way: band([runs[way][k]["curve"] for k in keys]) for way in ways}
    # anytime: the child-epochs the base way needs to reach each other way's final best validation fitness
    anytime = {way: [epochs_to_reach(runs[base][k]["curve"], runs[way][k]["curve"][-1][1])
                     if runs[way][k]["curve"] else None for k in keys]
               for way in stats}
    return {"ways": list(ways), "seeds": list(seeds), "base": base, "runs": runs, "fixed": fixed,
            "summary": summary, "stats": stats, "curves": curves, "anytime": anytime}


# --- printing -------------------------------------------------------------------------------------------------


def _pm(pair: Sequence[float | None], digits: int = 4) -> str:
    mean, sd = pair
    assert mean is not None
    return f"{mean:.{digits}f} +- {sd:.{digits}f}" if sd is not None else f"{mean:.{digits}f} +- n/a"


def compare_lines(result: dict[str, Any]) -> list[str]:
    """The printed table of a comparison: per way, mean +- sd over seeds; the base way against each other way."""
    n, base = len(result["seeds"]), result.get("base", BASE_WAY)
    w = max(12, *(len(way) for way in result["ways"]))  # the way column: as wide as the longest variant
    lines = [f"test split, mean +- sd over {n} seed(s) ({', '.join(map(str, result['seeds']))}); each winner "
             f"retrained {result['repeats']}x; budget {result['budget']} child-epochs per way",
             f"  {'way':<{w}} {'clean':>16} {'adv':>16} {'fitness':>16} {'child-epochs':>18} {'seconds':>18}"]
    for way in [*result["ways"], *FIXED_ROWS]:
        row = result["summary"][way]
        tail = (f" {_pm(row['child_epochs'], 1):>18} {_pm(row['seconds'], 1):>18}" if way in result["ways"]
                else f" {'(fixed row)':>18}")
        lines.append(f"  {way:<{w}} {_pm(row['clean']):>16} {_pm(row['adv']):>16} {_pm(row['fitness']):>16}{tail}")
    lines.append("validation fitness of each winner: stored by the search, minus its retrained mean (the lucky "
                 "gap), and the sd over its retrainings (fitness noise), mean over seeds:")
    for way in result["ways"]:
        row = result["summary"][way]
        noise = "n/a" if row["val_noise_sd"] is None else f"{row['val_noise_sd']:.4f}"
        lines.append(f"  {way:<{w}} stored {_pm(row['val_fitness'])}  lucky gap {_pm(row['lucky_gap'])}  "
                     f"noise sd {noise}")
    margined = [way for way in result["ways"] if result["summary"][way].get("margins", {}).get("median") is not None]
    if margined:
        lines.append("fitness differences that decided replacements (child minus the candidate it replaced), "
                     "seeds pooled:")
        for way in margined:
            mg = result["summary"][way]["margins"]
            under = "" if mg["under_noise"] is None else f"; {mg['under_noise']:.0%} smaller than the noise sd"
            lines.append(f"  {way:<{w}} {mg['per_seed']:.1f} replacements per seed, median {mg['median']:.4f}{under}")
    replayed = [way for way in result["ways"] if result["summary"][way].get("prune_replay", {}).get("children")]
    if replayed:
        lines.append("NichePruner's rule (its defaults) replayed on each niche way's learning curves, seeds pooled:")
        for way in replayed:
            pr = result["summary"][way]["prune_replay"]
            lines.append(f"  {way:<{w}} would stop {pr['stopped']}/{pr['children']} children, saving "
                         f"{pr['saved'] / max(pr['child_epochs'], 1):.0%} of their child-epochs, and miss "
                         f"{pr['missed']}/{pr['replacements']} replacements")
    if result["stats"]:
        lines.append(f"{base} minus way, paired over seeds: mean difference (>= its one-sided 95% lower bound, "
                     f"paired t; seeds where {base} is ahead):")
        for way, by_metric in result["stats"].items():
            cells = []
            for m in METRICS:
                st = by_metric[m]
                low = "n/a" if st["lower95"] is None else f"{st['lower95']:+.4f}"
                cells.append(f"{m} {st['mean_diff']:+.4f} (>= {low}, {st['wins']}/{st['n']})")
            lines.append(f"  vs {way:<{max(9, *map(len, result['stats']))}} " + "; ".join(cells))
    if result.get("anytime"):
        lines.append(f"child-epochs {base} needed to reach each way's final best validation fitness, per seed "
                     f"(never: not within the budget of {result['budget']}):")
        for way, reach in result["anytime"].items():
            per_seed = ", ".join("never" if r is None else f"{r:.0f}" for r in reach)
            reached = [r for r in reach if r is not None]
            share = f"; median {statistics.median(reached) / result['budget']:.0%} of the budget where reached" \
                if reached else ""
            lines.append(f"  {way:<{w}} {per_seed}{share}")
    return lines
