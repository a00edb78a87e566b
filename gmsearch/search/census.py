"""How a study's trials count for the trial being sampled: the sampler's census (Algorithm 1's roles).

Trial numbers decide roles as with one worker: the first ``population_size``
live trials are initial candidates, the rest children in number order.
Trials other workers are still sampling (RUNNING, no genome yet, younger
than :data:`PENDING_SECONDS`) count as what they are about to become; a
trial just failed by the heartbeat keeps its place until Optuna has
re-queued it. See :mod:`gmsearch.search.sampler`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from optuna.trial import FrozenTrial, TrialState

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


def census_of(trials: Sequence[FrozenTrial], me: int, population_size: int, now: datetime) -> Census:
    census = Census()
    later = waiting = 0

    @functools.cache
    def retried() -> set[int]:  # one pass over the study, only when a trial has just failed
        return {n for t in trials for n in t.system_attrs.get("retry_history", ())}

    for t in sorted(trials, key=lambda t: t.number):
        if t.number == me or (t.state == TrialState.FAIL and not requeue_pending(t, retried, now)):
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
) -> bool:
    """Whether every planned trial has finished (``current`` counted with ``current_state``)."""
    done_initial = done_children = 0
    for t in trials:
        if GENOME_KEY not in t.system_attrs:
            continue
        state = current_state if t.number == current and current_state is not None else t.state
        if state in (TrialState.RUNNING, TrialState.WAITING):
            return False
        if state in (TrialState.COMPLETE, TrialState.PRUNED):
            if is_child(t):
                done_children += 1
            else:
                done_initial += 1
    return done_initial >= population_size and done_children >= n_planned_children
