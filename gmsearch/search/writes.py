"""A trial's bookkeeping written through Optuna's public storage API, in an order readers rely on.

The sampler writes a child's spectrum params, parent, generation,
architecture, epochs and genome together, and the objective its results and
learning curve together: :func:`write_trial` makes Optuna's per-attribute
storage calls (``set_trial_param``, ``set_trial_intermediate_value``,
``set_trial_user_attr``, ``set_trial_system_attr``) on any storage. On an RDB
storage each call is a transaction of its own (3-8 ms on SQLite); a trial makes
about 30, a fixed cost that is a small share of a paper-scale child (see the
README's Performance section). The writes come in a fixed order: params first
(the one write a study can refuse, when a param changes kind), then
intermediate values, user attrs and system attrs, so the sampler's genome, a
system attr, lands last and other workers may read it as "this trial's
bookkeeping is complete". :class:`EpochReports` is the per-epoch
``trial.report`` of a trial whose pruner never stops it: its values are
written every few seconds and with the results at the end.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage

from gmsearch.search._optuna_private import storage_of, trial_id_of
from gmsearch.training.loop import report_epoch

__all__ = ["EpochReports", "write_trial"]

#: Deferred per-epoch values reach the storage at least this often (the dashboard's curves stay live).
REPORT_FLUSH_SECONDS = 5.0


def write_trial(
    storage: BaseStorage,
    trial_id: int,
    *,
    user_attrs: Mapping[str, Any] | None = None,
    system_attrs: Mapping[str, Any] | None = None,
    params: Mapping[str, tuple[float, BaseDistribution]] | None = None,
    intermediate_values: Mapping[int, float] | None = None,
) -> None:
    """Write params (internal value, distribution), intermediate values (step -> value, as
    ``trial.report``), user attrs and system attrs of a running trial, in this order.

    Raises:
        optuna.exceptions.UpdateFinishedTrialError: the trial has finished (nothing is written).
        ValueError: a param's distribution is incompatible with the study's (the params before it are
            written, nothing else).
    """
    for name, (value, distribution) in (params or {}).items():
        storage.set_trial_param(trial_id, name, value, distribution)
    for step, step_value in (intermediate_values or {}).items():
        storage.set_trial_intermediate_value(trial_id, int(step), float(step_value))
    for key, attr in (user_attrs or {}).items():
        storage.set_trial_user_attr(trial_id, key, attr)
    for key, attr in (system_attrs or {}).items():
        storage.set_trial_system_attr(trial_id, key, attr)


class EpochReports:
    """``trial.report`` for each epoch, at once only when the study's pruner reads it.

    Call it with ``(epoch, value)`` after each epoch (:func:`gmsearch.train`'s
    ``on_epoch``). A pruner that may stop the trial decides on each value as
    it is stored, so then every value is reported and checked at once
    (``trial.report``, ``trial.should_prune``; raises ``optuna.TrialPruned``).
    Under ``NopPruner`` (gmsearch's default) nothing reads them mid-trial:
    values are kept and written at most every ``flush_seconds`` (the
    dashboard's learning curves stay live) and, through :meth:`take`, with
    the trial's results at the end. The stored
    values are the same either way. Multi-objective studies have no
    intermediate values (Optuna's rule): nothing is reported.
    """

    def __init__(self, trial: optuna.Trial, *, flush_seconds: float = REPORT_FLUSH_SECONDS) -> None:
        self.trial = trial
        self.flush_seconds = flush_seconds
        # multi-objective: not deferred, and report_epoch reports nothing
        self.deferred = isinstance(trial.study.pruner, optuna.pruners.NopPruner) and len(trial.study.directions) == 1
        self._pending: dict[int, float] = {}
        self._reported: set[int] = set()
        self._last_flush = time.monotonic()

    def __call__(self, epoch: int, value: float) -> None:
        if not self.deferred:
            report_epoch(self.trial, value, epoch)
            return
        step, value = int(epoch), float(value)
        if step < 0:
            raise ValueError(f"epoch must be non-negative, got {step}")
        if step in self._reported or step in self._pending:
            return  # Optuna keeps the first value reported for a step
        self._pending[step] = value
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def take(self) -> dict[int, float]:
        """The values not written yet (for the trial's final write); they count as written."""
        pending, self._pending = self._pending, {}
        self._reported.update(pending)
        self._last_flush = time.monotonic()
        return pending

    def flush(self) -> None:
        """Write the values not written yet."""
        pending = self.take()
        if pending:
            write_trial(storage_of(self.trial.study), trial_id_of(self.trial), intermediate_values=pending)
