"""A trial's bookkeeping written in one storage transaction.

Optuna's storage API writes one attribute per call, and on an RDB storage
each call is a transaction of its own (an ORM lookup of the trial, an
upsert, a commit). The sampler writes a child's parent, generation,
architecture, epochs, spectrum params and genome together, and the
objective its results and learning curve together: :func:`write_trial` does
each group in one transaction on RDB storages (SQLite, PostgreSQL, MySQL)
and falls back to Optuna's per-attribute calls on any other storage
(in-memory, journal, gRPC proxy). :class:`EpochReports` is the per-epoch
``trial.report`` of a trial whose pruner never stops it: its values are
written together (every few seconds, and with the results at the end).

The RDB path writes the rows Optuna's own calls write (same tables, same
JSON encoding, same "trial is still updatable" check, same distribution
compatibility check), using the table models of Optuna's RDB schema. A
test compares every stored field with the per-attribute path on each
storage kind. Writes land all or nothing, so a reader never sees half of a
trial's bookkeeping.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, check_distribution_compatibility, distribution_to_json
from optuna.storages import BaseStorage, RDBStorage

from gmsearch.training.loop import report_epoch

__all__ = ["EpochReports", "write_trial"]

#: Deferred per-epoch values reach the storage at least this often (the dashboard's curves stay live).
REPORT_FLUSH_SECONDS = 5.0

#: Dialects with a multi-row upsert (SQLite has one from 3.24).
_UPSERT_DIALECTS = ("postgresql", "mysql") + (("sqlite",) if sqlite3.sqlite_version_info >= (3, 24, 0) else ())
#: Distribution of each param name per study, once checked (a study's params never change kind).
_checked: weakref.WeakKeyDictionary[RDBStorage, dict[tuple[int, str], str]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _rdb_of(storage: BaseStorage) -> RDBStorage | None:
    """The RDB storage behind ``storage`` (Optuna wraps RDB storages in a cache), else None."""
    if isinstance(storage, RDBStorage):
        return storage
    backend = getattr(storage, "_backend", None)
    return backend if isinstance(backend, RDBStorage) else None


def write_trial(
    storage: BaseStorage,
    trial_id: int,
    *,
    user_attrs: Mapping[str, Any] | None = None,
    system_attrs: Mapping[str, Any] | None = None,
    params: Mapping[str, tuple[float, BaseDistribution]] | None = None,
    intermediate_values: Mapping[int, float] | None = None,
) -> None:
    """Write user attrs, system attrs, params (internal value, distribution) and intermediate values
    (step -> value, as ``trial.report``) of a running trial.

    All at once on RDB storages; elsewhere intermediate values and params
    first, then user attrs, then system attrs (the sampler's genome, which
    marks a trial's bookkeeping complete, is a system attr).

    Raises:
        optuna.exceptions.UpdateFinishedTrialError: the trial has finished.
        ValueError: a param's distribution is incompatible with the study's.
    """
    user_attrs, system_attrs, params = dict(user_attrs or {}), dict(system_attrs or {}), dict(params or {})
    steps = {int(step): float(value) for step, value in (intermediate_values or {}).items()}
    if not (user_attrs or system_attrs or params or steps):
        return
    rdb = _rdb_of(storage)
    dialect = rdb.engine.name if rdb is not None else None
    if rdb is None or dialect not in _UPSERT_DIALECTS or not _rdb_schema_known():
        for step, value in steps.items():
            storage.set_trial_intermediate_value(trial_id, step, value)
        for name, (value, distribution) in params.items():
            storage.set_trial_param(trial_id, name, value, distribution)
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for key, value in system_attrs.items():
            storage.set_trial_system_attr(trial_id, key, value)
        return
    _write_rdb(rdb, dialect, trial_id, user_attrs, system_attrs, params, steps)


@functools.cache
def _rdb_schema_known() -> bool:
    """Whether this Optuna has the RDB table models the one-transaction path writes (else: per-attribute calls)."""
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session  # noqa: F401
    except ImportError:
        return False
    names = ("TrialModel", "TrialParamModel", "TrialUserAttributeModel", "TrialSystemAttributeModel",
             "TrialIntermediateValueModel")
    return all(hasattr(models, name) for name in names)


def _upsert(dialect: str, model: Any, rows: list[dict[str, Any]], key: str = "key",
            values: tuple[str, ...] = ("value_json",)) -> Any:
    """One multi-row INSERT that overwrites the ``values`` columns of an existing (trial, ``key``) row."""
    if dialect == "mysql":
        from sqlalchemy.dialects import mysql

        upsert = mysql.insert(model).values(rows)
        return upsert.on_duplicate_key_update({name: upsert.inserted[name] for name in values})
    from sqlalchemy.dialects import postgresql, sqlite

    stmt = sqlite.insert(model) if dialect == "sqlite" else postgresql.insert(model)
    stmt = stmt.values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[model.trial_id, getattr(model, key)], set_={name: stmt.excluded[name] for name in values}
    )


def _write_rdb(
    rdb: RDBStorage,
    dialect: str,
    trial_id: int,
    user_attrs: dict[str, Any],
    system_attrs: dict[str, Any],
    params: dict[str, tuple[float, BaseDistribution]],
    steps: dict[int, float],
) -> None:
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy import select

    with _create_scoped_session(rdb.scoped_session) as session:
        row = session.execute(
            select(models.TrialModel.state, models.TrialModel.study_id).where(models.TrialModel.trial_id == trial_id)
        ).one_or_none()
        if row is None:
            raise KeyError(f"no trial with trial_id {trial_id}")
        rdb.check_trial_is_updatable(trial_id, row.state)
        if params:
            _check_params(rdb, session, row.study_id, params)
            session.execute(
                models.TrialParamModel.__table__.insert(),
                [
                    {"trial_id": trial_id, "param_name": name, "param_value": value,
                     "distribution_json": distribution_to_json(dist)}
                    for name, (value, dist) in params.items()
                ],
            )
        if steps:
            model = models.TrialIntermediateValueModel
            rows: list[dict[str, Any]] = []
            for step, value in steps.items():
                stored, kind = model.intermediate_value_to_stored_repr(value)
                rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored,
                             "intermediate_value_type": kind})
            session.execute(_upsert(dialect, model, rows, key="step",
                                    values=("intermediate_value", "intermediate_value_type")))
        for model, attrs in ((models.TrialUserAttributeModel, user_attrs),
                             (models.TrialSystemAttributeModel, system_attrs)):
            if attrs:
                rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
                session.execute(_upsert(dialect, model, rows))


def _check_params(
    rdb: RDBStorage, session: Any, study_id: int, params: dict[str, tuple[float, BaseDistribution]]
) -> None:
    """Optuna's rule: a param name keeps one kind of distribution within a study."""
    from optuna.distributions import json_to_distribution
    from optuna.storages._rdb import models
    from sqlalchemy import func, select

    with _lock:
        known = _checked.setdefault(rdb, {})
    unknown = [name for name in params if (study_id, name) not in known]
    if unknown:
        param = models.TrialParamModel
        query = (
            select(param.param_name, func.min(param.distribution_json))
            .join(models.TrialModel)
            .where(models.TrialModel.study_id == study_id, param.param_name.in_(unknown))
            .group_by(param.param_name)
        )
        for name, stored in session.execute(query).all():
            known[(study_id, name)] = stored
    for name, (_, dist) in params.items():
        previous = known.get((study_id, name))
        if previous is not None:
            check_distribution_compatibility(json_to_distribution(previous), dist)
        else:
            known[(study_id, name)] = distribution_to_json(dist)


class EpochReports:
    """``trial.report`` for each epoch, in as few storage transactions as the study's pruner allows.

    Call it with ``(epoch, value)`` after each epoch (:func:`gmsearch.train`'s
    ``on_epoch``). A pruner that may stop the trial decides on each value as
    it is stored, so then every value is reported and checked at once
    (``trial.report``, ``trial.should_prune``; raises ``optuna.TrialPruned``).
    Under ``NopPruner`` (gmsearch's default) nothing reads them mid-trial:
    values are kept and written together at most every ``flush_seconds``
    (the dashboard's learning curves stay live) and, through :meth:`take`,
    with the trial's results in one transaction at the end. The stored
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
        """Write the values not written yet, in one transaction."""
        pending = self.take()
        if pending:
            write_trial(self.trial.study._storage, self.trial._trial_id, intermediate_values=pending)
