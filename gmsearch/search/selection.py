"""The population, rebuilt from storage: Algorithm 1's selection replayed over completed trials.

:func:`replay` is deterministic: initial candidates fill the slots in
completion order; each child, in completion order, replaces the candidate
closest to it in spectrum distance (first closest by slot on ties) when its
fitness is strictly better (for several objectives: when it dominates), and
takes that slot. Failed and pruned trials never enter. Every process that
reads the study gets the same population.

A re-evaluation trial (``gmsearch:reevaluates``: it trained a candidate's
genome again under a new seed) does not compete: its values join the
evaluations of that candidate, if it still holds a slot, and the candidate's
fitness becomes their mean (a candidate replaced meanwhile ignores it).
Children are compared with that mean. :func:`fitness_estimates` gives every
trial's mean over its evaluations.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from gmsearch.nets.genome import Genome, spectrum_distance
from gmsearch.search._optuna_private import storage_of, study_id_of
from gmsearch.search.census import numbered_from_zero
from gmsearch.search.schema import (
    ADV_ACC,
    ARCH_KEY,
    CLEAN_ACC,
    FAIL_REASON_KEY,
    GENERATION_KEY,
    GENOME_KEY,
    PARENT_KEY,
    REEVALUATES_KEY,
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
    #: Each slot's fitness: its trial's values, or their mean with its re-evaluations' (see the module docstring).
    values: list[tuple[float, ...]] = field(default_factory=list)


def _completion_key(t: FrozenTrial) -> tuple[float, int]:
    done = t.datetime_complete.timestamp() if t.datetime_complete else float("inf")
    return (done, t.number)


class _Replayer:
    """Algorithm 1's selection applied one completed trial at a time (the state of :func:`replay`)."""

    def __init__(self, population_size: int, directions: Sequence[StudyDirection], scale: Sequence[float] | None):
        self.population_size, self.directions, self.scale = population_size, list(directions), scale
        self.slots: list[FrozenTrial] = []
        self.values: list[tuple[float, ...]] = []
        self.evaluations: list[list[tuple[float, ...]]] = []  # each slot's values, re-evaluations included
        self.genomes: list[Genome] = []
        self.replaced: dict[int, int | None] = {}

    def copy(self) -> _Replayer:
        other = _Replayer(self.population_size, self.directions, self.scale)
        other.slots, other.values, other.genomes = list(self.slots), list(self.values), list(self.genomes)
        other.evaluations = [list(e) for e in self.evaluations]
        other.replaced = dict(self.replaced)
        return other

    def _take(self, j: int, trial: FrozenTrial, vals: tuple[float, ...], genome: Genome) -> None:
        if j == len(self.slots):
            self.slots.append(trial)
            self.values.append(vals)
            self.evaluations.append([vals])
            self.genomes.append(genome)
        else:
            self.slots[j], self.values[j], self.evaluations[j], self.genomes[j] = trial, vals, [vals], genome

    def apply(self, trial: FrozenTrial, values: Sequence[float]) -> None:
        if GENOME_KEY not in trial.system_attrs:
            return
        vals = tuple(float(v) for v in values)
        if not is_child(trial):
            if len(self.slots) < self.population_size:
                self._take(len(self.slots), trial, vals, genome_of(trial))
            return
        if not self.slots:
            return
        target = trial.user_attrs.get(REEVALUATES_KEY)
        if target is not None:
            self.replaced[trial.number] = None  # it never takes a slot
            j = next((i for i, t in enumerate(self.slots) if t.number == target), None)
            if j is not None:
                self.evaluations[j].append(vals)
                self.values[j] = _mean(self.evaluations[j])
            return
        genome = genome_of(trial)
        distances = [spectrum_distance(genome, g, self.scale) for g in self.genomes]
        j = distances.index(min(distances))  # first closest on ties
        if _better(vals, self.values[j], self.directions):
            self.replaced[trial.number] = self.slots[j].number
            self._take(j, trial, vals, genome)
        else:
            self.replaced[trial.number] = None

    def result(self) -> Replay:
        return Replay(slots=list(self.slots), replaced=dict(self.replaced), values=list(self.values))


def _mean(evaluations: Sequence[tuple[float, ...]]) -> tuple[float, ...]:
    return tuple(sum(column) / len(column) for column in zip(*evaluations, strict=True))


def _events(trials: Sequence[FrozenTrial], skip: set[int] | frozenset[int] = frozenset()) -> list[FrozenTrial]:
    """The completed trials with values (but those numbered in ``skip``), in completion order."""
    return sorted(
        (t for t in trials if t.state == TrialState.COMPLETE and t.number not in skip and t.values),
        key=_completion_key,
    )


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
    state = _Replayer(population_size, directions, scale)
    for t in _events(trials):
        state.apply(t, t.values)
    if extra is not None:
        state.apply(*extra)
    return state.result()


class IncrementalReplay:
    """:func:`replay` kept up to date as trials complete, for studies with thousands of trials.

    :meth:`update` applies only the trials completed since the last call when
    they all completed after the ones already applied (the usual case); a
    trial that completed earlier but is seen only now (another worker's
    clock, a slow commit) makes it replay from the start, so the result is
    always exactly :func:`replay`'s. The leading trials (number order) that
    have finished are not read again: a finished trial never changes.
    """

    def __init__(self, population_size: int, directions: Sequence[StudyDirection], scale: Sequence[float] | None):
        self._settings = (population_size, list(directions), scale)
        self._state = _Replayer(*self._settings)
        self._applied: set[int] = set()
        self._last: tuple[float, int] | None = None
        self._scanned = 0  # trials 0 .. _scanned-1 are finished and were read: none of them can be new
        self.rebuilds = 0

    def update(
        self, trials: Sequence[FrozenTrial], *, extra: tuple[FrozenTrial, Sequence[float]] | None = None
    ) -> Replay:
        """The replay of ``trials`` (``extra`` applied last without being remembered)."""
        n = self._scanned
        in_order = numbered_from_zero(trials, n)
        new = _events(trials[n:] if in_order else trials, skip=self._applied)
        if new and self._last is not None and _completion_key(new[0]) < self._last:
            self._state, self._applied, self._last = _Replayer(*self._settings), set(), None
            self.rebuilds += 1
            new = _events(trials)
        if not in_order:
            n = 0
        while n < len(trials) and trials[n].number == n and trials[n].state.is_finished():
            n += 1  # a finished trial never changes: the next update need not read it
        self._scanned = n
        for t in new:
            self._state.apply(t, t.values)
            self._applied.add(t.number)
            self._last = _completion_key(t)
        if extra is None:
            return self._state.result()
        state = self._state.copy()
        state.apply(*extra)
        return state.result()


_incremental: weakref.WeakKeyDictionary[BaseStorage, dict[tuple[Any, ...], IncrementalReplay]] = (
    weakref.WeakKeyDictionary()
)
_incremental_lock = threading.Lock()


def replay_study(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    population_size: int,
    *,
    scale: Sequence[float] | None = None,
    extra: tuple[FrozenTrial, Sequence[float]] | None = None,
) -> Replay:
    """:func:`replay` of ``trials`` (the study's, read just now), kept incremental per study and process.

    The sampler and the pruner call it on every trial and every epoch; a
    replay that starts from scratch each time costs O(trials) genome reads
    per call, this one only the trials completed since the last call.
    """
    key = (study_id_of(study), population_size, tuple(scale) if scale is not None else None)
    with _incremental_lock:
        per_storage = _incremental.setdefault(storage_of(study), {})
        incremental = per_storage.get(key)
        if incremental is None:
            incremental = per_storage[key] = IncrementalReplay(population_size, study.directions, scale)
        return incremental.update(trials, extra=extra)


def fitness_estimates(trials: Sequence[FrozenTrial]) -> dict[int, tuple[float, ...]]:
    """Each completed trial's fitness by trial number: its values, averaged with those of the completed trials
    that re-evaluate it (``gmsearch:reevaluates``); re-evaluation trials have no entry of their own (they trained
    another trial's genome). Without re-evaluations: every completed trial's values."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    evaluations: dict[int, list[tuple[float, ...]]] = {
        t.number: [tuple(t.values)] for t in done if t.user_attrs.get(REEVALUATES_KEY) is None
    }
    for t in done:
        target = t.user_attrs.get(REEVALUATES_KEY)
        if target is not None and target in evaluations:
            evaluations[target].append(tuple(t.values))
    return {number: _mean(e) for number, e in evaluations.items()}


def replay_of(study: optuna.Study, population_size: int | None = None) -> Replay:
    """The replay of ``study`` with the settings of its sampler (or those stored on the study): the final word
    on which child replaced which candidate, the same in every process."""
    stored = storage_of(study).get_study_system_attrs(study_id_of(study)).get(SAMPLER_KEY) or {}
    live = study.sampler
    size = population_size or getattr(live, "population_size", None) or stored.get("population_size")
    if size is None:
        raise ValueError(f"study {study.study_name!r} has no gmsearch sampler settings; pass population_size")
    scale = getattr(live, "spectrum_scale", None) if hasattr(live, "population_size") else stored.get("spectrum_scale")
    return replay(study.get_trials(deepcopy=False), size, study.directions, scale=scale)


def population(study: optuna.Study, *, population_size: int | None = None) -> list[FrozenTrial]:
    """The current candidates of ``study`` as FrozenTrials, in slot order."""
    return replay_of(study, population_size).slots


def ranked_population(study: optuna.Study) -> list[FrozenTrial]:
    """The current candidates, best first by the study's direction(s) (several objectives: by their sum)."""
    signs = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in study.directions]
    result = replay_of(study)  # its values: re-evaluations averaged in
    ranked = sorted(zip(result.slots, result.values, strict=True),
                    key=lambda tv: -sum(s * v for s, v in zip(signs, tv[1], strict=True)))
    return [t for t, _ in ranked]


def lineage(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial with a genome, in trial-number order.

    Keys: ``number``, ``state``, ``parent``, ``generation``, ``replaced`` (the
    candidate it replaced, from the replay: the same answer every process
    gets), ``reevaluates`` (the candidate a re-evaluation trial trained
    again), ``in_population``, ``values``, ``clean_acc``, ``adv_acc``,
    ``spectrum``, ``architecture``, ``fail_reason``.
    """
    trials = [t for t in study.get_trials(deepcopy=False) if GENOME_KEY in t.system_attrs]
    if not trials:
        return []
    result = replay_of(study)
    current = {t.number for t in result.slots}
    rows = []
    for t in trials:
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "parent": t.user_attrs.get(PARENT_KEY),
            "generation": int(t.user_attrs.get(GENERATION_KEY) or 0),
            "replaced": result.replaced.get(t.number),
            "reevaluates": t.user_attrs.get(REEVALUATES_KEY),
            "in_population": t.number in current,
            "values": t.values,
            "clean_acc": t.user_attrs.get(CLEAN_ACC),
            "adv_acc": t.user_attrs.get(ADV_ACC),
            "spectrum": list(genome_of(t).spectrum()),
            "architecture": t.user_attrs.get(ARCH_KEY),
            "fail_reason": t.user_attrs.get(FAIL_REASON_KEY),
        })
    return rows
