"""The population, rebuilt from storage: Algorithm 1's selection replayed over completed trials.

:func:`replay` is deterministic: initial candidates fill the slots in
completion order; each child, in completion order, replaces the candidate
closest to it in spectrum distance (first closest by slot on ties) when its
fitness is strictly better (for several objectives: when it dominates), and
takes that slot. Failed and pruned trials never enter. Every process that
reads the study gets the same population.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from gmsearch.nets.genome import Genome, spectrum_distance
from gmsearch.search.schema import (
    ADV_ACC,
    ARCH_KEY,
    CLEAN_ACC,
    FAIL_REASON_KEY,
    GENERATION_KEY,
    GENOME_KEY,
    PARENT_KEY,
    REPLACED_KEY,
    SAMPLER_KEY,
    genome_of,
    is_child,
)


def _better(child: Sequence[float], old: Sequence[float], directions: Sequence[StudyDirection]) -> bool:
    """Strictly better for one objective; Pareto dominance for several."""
    signs = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in directions]
    c = [s * v for s, v in zip(signs, child, strict=True)]
    o = [s * v for s, v in zip(signs, old, strict=True)]
    if len(c) == 1:
        return c[0] > o[0]
    return all(a >= b for a, b in zip(c, o, strict=True)) and any(a > b for a, b in zip(c, o, strict=True))


@dataclass
class Replay:
    """The population rebuilt from completed trials."""

    slots: list[FrozenTrial]
    replaced: dict[int, int | None]  # child number -> trial number it replaced (None: rejected)


def _completion_key(t: FrozenTrial) -> tuple[float, int]:
    done = t.datetime_complete.timestamp() if t.datetime_complete else float("inf")
    return (done, t.number)


def replay(
    trials: Sequence[FrozenTrial],
    population_size: int,
    directions: Sequence[StudyDirection],
    *,
    scale: Sequence[float] | None = None,
    extra: tuple[FrozenTrial, Sequence[float]] | None = None,
) -> Replay:
    """Rebuild the population from ``trials`` (Algorithm 1's selection, replayed).

    Args:
        trials: All trials of the study (any states; only COMPLETE ones count).
        population_size: Number of slots ``s``.
        directions: The study's optimisation directions.
        scale: Optional per-dimension weights of the spectrum distance.
        extra: A trial not yet stored as COMPLETE, with its values, applied last
            (the sampler's ``after_trial`` uses it).
    """
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=_completion_key)
    events: list[tuple[FrozenTrial, Sequence[float]]] = [(t, t.values) for t in done if t.values]
    if extra is not None:
        events.append(extra)
    slots: list[FrozenTrial] = []
    values: list[Sequence[float]] = []
    genomes: list[Genome] = []
    replaced: dict[int, int | None] = {}
    for trial, vals in events:
        if GENOME_KEY not in trial.system_attrs:
            continue
        if not is_child(trial):
            if len(slots) < population_size:
                slots.append(trial)
                values.append(vals)
                genomes.append(genome_of(trial))
            continue
        if not slots:
            continue
        genome = genome_of(trial)
        distances = [spectrum_distance(genome, g, scale) for g in genomes]
        j = distances.index(min(distances))  # first closest on ties
        if _better(vals, values[j], directions):
            replaced[trial.number] = slots[j].number
            slots[j], values[j], genomes[j] = trial, vals, genome
        else:
            replaced[trial.number] = None
    return Replay(slots=slots, replaced=replaced)


def _replay_of(study: optuna.Study, population_size: int | None = None) -> Replay:
    """The replay of ``study`` with the settings of its sampler (or those stored on the study)."""
    stored = study._storage.get_study_system_attrs(study._study_id).get(SAMPLER_KEY) or {}
    live = study.sampler
    size = population_size or getattr(live, "population_size", None) or stored.get("population_size")
    if size is None:
        raise ValueError(f"study {study.study_name!r} has no gmsearch sampler settings; pass population_size")
    scale = getattr(live, "spectrum_scale", None) if hasattr(live, "population_size") else stored.get("spectrum_scale")
    return replay(study.get_trials(deepcopy=False), size, study.directions, scale=scale)


def population(study: optuna.Study, *, population_size: int | None = None) -> list[FrozenTrial]:
    """The current candidates of ``study`` as FrozenTrials, in slot order."""
    return _replay_of(study, population_size).slots


def ranked_population(study: optuna.Study) -> list[FrozenTrial]:
    """The current candidates, best first by the study's direction(s) (several objectives: by their sum)."""
    signs = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in study.directions]
    candidates = [t for t in population(study) if t.values]
    return sorted(candidates, key=lambda t: -sum(s * v for s, v in zip(signs, t.values, strict=True)))


def lineage(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial with a genome, in trial-number order.

    Keys: ``number``, ``state``, ``parent``, ``generation``, ``replaced`` (the
    candidate it replaced, from the replay: the same answer every process
    gets), ``in_population``, ``values``, ``clean_acc``, ``adv_acc``,
    ``spectrum``, ``architecture``, ``fail_reason``.
    """
    trials = [t for t in study.get_trials(deepcopy=False) if GENOME_KEY in t.system_attrs]
    if not trials:
        return []
    result = _replay_of(study)
    current = {t.number for t in result.slots}
    rows = []
    for t in trials:
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "parent": t.user_attrs.get(PARENT_KEY),
            "generation": int(t.user_attrs.get(GENERATION_KEY) or 0),
            "replaced": result.replaced.get(t.number),
            "in_population": t.number in current,
            "values": t.values,
            "clean_acc": t.user_attrs.get(CLEAN_ACC),
            "adv_acc": t.user_attrs.get(ADV_ACC),
            "spectrum": list(genome_of(t).spectrum()),
            "architecture": t.user_attrs.get(ARCH_KEY),
            "fail_reason": t.user_attrs.get(FAIL_REASON_KEY),
        })
    return rows


def sync_replaced(study: optuna.Study) -> int:
    """Store on every completed child the candidate the replay says it replaced; returns how many changed.

    A child's ``after_trial`` stores a first answer before Optuna marks it
    complete; with many workers, trials completing meanwhile can change its
    place in the replay's completion order. Workers call this when they stop,
    so the stored bookkeeping agrees with :func:`population`.
    """
    result = _replay_of(study)
    changed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number in result.replaced and t.user_attrs.get(REPLACED_KEY) != result.replaced[t.number]:
            study._storage.set_trial_user_attr(t._trial_id, REPLACED_KEY, result.replaced[t.number])
            changed += 1
    return changed
