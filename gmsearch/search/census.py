"""How a study's trials count for the trial being sampled: the sampler's census (Algorithm 1's roles).

Trial numbers decide roles as with one worker: the first ``population_size``
live trials are initial candidates, the rest children in number order.
Trials other workers are still sampling (RUNNING, no genome yet, younger
than :data:`PENDING_SECONDS`) count as what they are about to become; a
trial just failed by the heartbeat keeps its place until Optuna has
re-queued it. A pruned initial candidate counts as a failed one (it never
enters the population, so another takes its place); a pruned child counts,
and so does every pruned trial of a way without a population (``fresh``).
See :mod:`gmsearch.search.sampler`.

Both passes over a study (:func:`census_of`, :func:`finished`) are
incremental with a :class:`Settled` (one per study and process, from
:func:`settled_of`): the leading trials that have finished for good count
the same in every later census, so they are counted once and each call
reads only the trials after them.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from gmsearch.search._optuna_private import storage_of, study_id_of
from gmsearch.search.schema import GENOME_KEY, SURPLUS_KEY, TOLD_FAIL_KEY, is_child

#: A RUNNING trial without a genome older than this was left by a worker that died while sampling.
PENDING_SECONDS = 120.0
#: How long a trial waits for earlier trials that other workers are sampling right now.
SETTLE_SECONDS = 5.0
#: How long a trial failed by the heartbeat (not by its worker) keeps its place while its re-queue is written.
REQUEUE_SECONDS = 10.0


def _age(trial: FrozenTrial, now: datetime) -> float:
    return (now - trial.datetime_start).total_seconds() if trial.datetime_start else 0.0


@dataclass
class Census:
    """How the other trials of a study count for the trial being sampled (``me``)."""

    n_initial: int = 0  # live initial candidates, including ones still being sampled
    initial: list[FrozenTrial] = field(default_factory=list)  # initial candidates with a genome, not failed
    earlier_children: list[FrozenTrial] = field(default_factory=list)  # numbers < me, in number order
    n_children: int = 0  # all live children, including later-numbered re-queued ones and earlier waiters
    settling: bool = False  # an earlier trial is being sampled by another worker right now


def requeue_pending(trial: FrozenTrial, retried: Callable[[], set[int]], now: datetime) -> bool:
    """A trial just failed by the heartbeat whose re-queued copy is not written yet.

    Optuna fails a stale trial, then re-queues it in a second step; counting the
    trial until then keeps other workers from filling its place twice.
    ``retried()`` gives the trial numbers already re-queued (read only when needed).
    """
    if trial.state != TrialState.FAIL or trial.datetime_complete is None:
        return False
    if (now - trial.datetime_complete).total_seconds() >= REQUEUE_SECONDS or GENOME_KEY not in trial.system_attrs:
        return False
    # failed by its own worker (never re-queued), or already re-queued
    return not trial.system_attrs.get(TOLD_FAIL_KEY) and trial.number not in retried()


@dataclass
class _Prefix:
    """What trials ``0 .. n-1``, all finished for good, contribute to every later census."""

    n: int = 0
    n_initial: int = 0  # initial candidates with a genome, not failed
    initial: list[FrozenTrial] = field(default_factory=list)
    children: list[FrozenTrial] = field(default_factory=list)  # children with a genome, not failed, in number order
    done_initial: int = 0  # COMPLETE (or PRUNED, when not refilled), with a genome
    done_children: int = 0


def _settled(trial: FrozenTrial, now: datetime) -> bool:
    """Whether ``trial`` counts the same in every census from now on (finished, no re-queue pending)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state != TrialState.FAIL:
        return False
    complete = trial.datetime_complete
    # within REQUEUE_SECONDS a failed trial may still count (requeue_pending); after it, never
    return complete is None or GENOME_KEY not in trial.system_attrs or bool(trial.system_attrs.get(TOLD_FAIL_KEY)) \
        or (now - complete).total_seconds() >= REQUEUE_SECONDS


class Settled:
    """The counted prefix of one study's trials (number order), extended as trials finish.

    Trials are numbered from 0 without gaps, and a finished trial never
    changes, so the longest run of leading trials that have finished for
    good (:func:`_settled`) is counted once; :func:`census_of` and
    :func:`finished` then read only the trials after it. A list that does
    not match the prefix (another study, or fewer trials) is counted from
    scratch, so results are always those of a full pass.
    """

    def __init__(self, *, refill_pruned_initial: bool = True) -> None:
        #: Whether a pruned initial candidate leaves its place to another (Algorithm 1's population); False for
        #: a way whose trials are all fresh draws (``random``, ``restarts``): a pruned one is spent.
        self.refill_pruned_initial = refill_pruned_initial
        self._prefix = _Prefix()
        self._lock = threading.Lock()

    def split(self, trials: Sequence[FrozenTrial], now: datetime) -> tuple[_Prefix, list[FrozenTrial]]:
        """The prefix of ``trials`` (extended as far as it is settled) and the other trials, in number order."""
        with self._lock:
            p = self._prefix
            ordered = trials if numbered_from_zero(trials, p.n) else sorted(trials, key=lambda t: t.number)
            if p.n and not numbered_from_zero(ordered, p.n):
                p = self._prefix = _Prefix()
            while p.n < len(ordered) and ordered[p.n].number == p.n and _settled(ordered[p.n], now):
                _count(p, ordered[p.n], self.refill_pruned_initial)
                p.n += 1
            snapshot = _Prefix(p.n, p.n_initial, list(p.initial), list(p.children), p.done_initial, p.done_children)
            return snapshot, sorted(ordered[p.n:], key=lambda t: t.number)


def numbered_from_zero(trials: Sequence[FrozenTrial], n: int) -> bool:
    """Whether the first ``n`` of ``trials`` are trials ``0 .. n-1`` in order (checked at the ends: a study's
    trials are numbered without gaps, and Optuna lists them in number order)."""
    return len(trials) >= n and (n == 0 or (trials[0].number == 0 and trials[n - 1].number == n - 1))


def pruned_initial(t: FrozenTrial) -> bool:
    """A PRUNED initial candidate: it never enters the population (the replay takes COMPLETE trials only), so it
    counts for nothing and another initial candidate takes its place, as after a failure. Not for a way without
    a population (``fresh``: every trial is a spent draw, see :class:`Settled`)."""
    return t.state == TrialState.PRUNED and not is_child(t)


def _count(p: _Prefix, t: FrozenTrial, refill: bool) -> None:
    """Add settled trial ``t`` to the prefix (a failed one, a pruned initial candidate when ``refill``, or one
    without a genome counts for nothing)."""
    if GENOME_KEY not in t.system_attrs or t.state == TrialState.FAIL or (refill and pruned_initial(t)):
        return
    if is_child(t):
        p.children.append(t)
        p.done_children += 1
    else:
        p.n_initial += 1
        p.initial.append(t)
        p.done_initial += 1


_settled_by_study: weakref.WeakKeyDictionary[BaseStorage, dict[int, Settled]] = weakref.WeakKeyDictionary()
_settled_lock = threading.Lock()


def settled_of(study: optuna.Study) -> Settled:
    """The :class:`Settled` of ``study`` in this process (one per storage object and study); a sampler whose
    trials are all fresh draws (``fresh``) does not refill a pruned one."""
    with _settled_lock:
        per_storage = _settled_by_study.setdefault(storage_of(study), {})
        if study_id_of(study) not in per_storage:
            fresh = bool(getattr(study.sampler, "fresh", False))
            per_storage[study_id_of(study)] = Settled(refill_pruned_initial=not fresh)
        return per_storage[study_id_of(study)]


def census_of(
    trials: Sequence[FrozenTrial], me: int, population_size: int, now: datetime, settled: Settled | None = None
) -> Census:
    """How ``trials`` (a study's, any order) count for trial number ``me``.

    With ``settled`` (the study's :class:`Settled`), only the trials after
    its prefix are read; the result is the same.
    """
    prefix, rest = settled.split(trials, now) if settled is not None else (_Prefix(), [])
    if settled is None or me < prefix.n:  # me settled: another worker failed it meanwhile; count it as it is
        prefix, rest = _Prefix(), sorted(trials, key=lambda t: t.number)
    census = Census(n_initial=prefix.n_initial, initial=prefix.initial, earlier_children=prefix.children)
    refill = settled.refill_pruned_initial if settled is not None else True
    later = waiting = 0

    @functools.cache
    def retried() -> set[int]:  # one pass over the study, only when a trial has just failed
        return {n for t in trials for n in t.system_attrs.get("retry_history", ())}

    for t in rest:
        if t.number == me or (t.state == TrialState.FAIL and not requeue_pending(t, retried, now)) \
                or (refill and pruned_initial(t)):
            continue
        if GENOME_KEY in t.system_attrs:
            if not is_child(t):
                census.n_initial += 1
                if t.state != TrialState.FAIL:
                    census.initial.append(t)
            elif t.number < me:
                census.earlier_children.append(t)
            else:
                later += 1  # e.g. a dead worker's child, re-queued under a new number
        elif t.number < me and t.state == TrialState.RUNNING:
            if t.system_attrs.get(SURPLUS_KEY):
                waiting += 1  # a surplus trial waiting for a vacancy goes first
            elif _age(t, now) < PENDING_SECONDS:
                # another worker is sampling it: count it as what it is about to become
                census.settling = census.settling or _age(t, now) < SETTLE_SECONDS
                if census.n_initial < population_size:
                    census.n_initial += 1
                else:
                    census.earlier_children.append(t)
    census.n_children = len(census.earlier_children) + later + waiting
    return census


def finished(
    trials: Sequence[FrozenTrial],
    population_size: int,
    n_planned_children: int,
    *,
    current: int | None = None,
    current_state: TrialState | None = None,
    settled: Settled | None = None,
) -> bool:
    """Whether every planned trial has finished (``current`` counted with ``current_state``).

    With ``settled`` (the study's :class:`Settled`), only the trials after its prefix are read.
    """
    prefix, rest = _Prefix(), list(trials)
    if settled is not None:
        prefix, rest = settled.split(trials, datetime.now())
        if current is not None and current < prefix.n:  # ``current`` counts with ``current_state``: a full pass
            prefix, rest = _Prefix(), list(trials)
    done_initial, done_children = prefix.done_initial, prefix.done_children
    refill = settled.refill_pruned_initial if settled is not None else True
    for t in rest:
        if GENOME_KEY not in t.system_attrs:
            continue
        state = current_state if t.number == current and current_state is not None else t.state
        if state in (TrialState.RUNNING, TrialState.WAITING):
            return False
        if state == TrialState.COMPLETE or (state == TrialState.PRUNED and (is_child(t) or not refill)):
            if is_child(t):
                done_children += 1
            else:
                done_initial += 1
    return done_initial >= population_size and done_children >= n_planned_children
