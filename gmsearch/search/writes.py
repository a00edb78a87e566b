"""A trial's bookkeeping written in one storage transaction.

Optuna's storage API writes one attribute per call, and on an RDB storage
each call is a transaction of its own (an ORM lookup of the trial, an
upsert, a commit). The sampler writes a child's parent, generation,
architecture, epochs, spectrum params and genome together, and the
objective its results together: :func:`write_trial` does each group in one
transaction on RDB storages (SQLite, PostgreSQL, MySQL) and falls back to
Optuna's per-attribute calls on any other storage (in-memory, journal,
gRPC proxy).

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
import weakref
from collections.abc import Mapping
from typing import Any

from optuna.distributions import BaseDistribution, check_distribution_compatibility, distribution_to_json
from optuna.storages import BaseStorage, RDBStorage

__all__ = ["write_trial"]

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
) -> None:
    """Write user attrs, system attrs and params (internal value, distribution) of a running trial.

    All at once on RDB storages; elsewhere params first, then user attrs,
    then system attrs (the sampler's genome, which marks a trial's
    bookkeeping complete, is a system attr).

    Raises:
        optuna.exceptions.UpdateFinishedTrialError: the trial has finished.
        ValueError: a param's distribution is incompatible with the study's.
    """
    user_attrs, system_attrs, params = dict(user_attrs or {}), dict(system_attrs or {}), dict(params or {})
    if not (user_attrs or system_attrs or params):
        return
    rdb = _rdb_of(storage)
    dialect = rdb.engine.name if rdb is not None else None
    if rdb is None or dialect not in _UPSERT_DIALECTS or not _rdb_schema_known():
        for name, (value, distribution) in params.items():
            storage.set_trial_param(trial_id, name, value, distribution)
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for key, value in system_attrs.items():
            storage.set_trial_system_attr(trial_id, key, value)
        return
    _write_rdb(rdb, dialect, trial_id, user_attrs, system_attrs, params)


@functools.cache
def _rdb_schema_known() -> bool:
    """Whether this Optuna has the RDB table models the one-transaction path writes (else: per-attribute calls)."""
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session  # noqa: F401
    except ImportError:
        return False
    names = ("TrialModel", "TrialParamModel", "TrialUserAttributeModel", "TrialSystemAttributeModel")
    return all(hasattr(models, name) for name in names)


def _upsert(dialect: str, model: Any, rows: list[dict[str, Any]]) -> Any:
    """One multi-row INSERT that overwrites the value of an existing (trial, key) row."""
    if dialect == "mysql":
        from sqlalchemy.dialects import mysql

        upsert = mysql.insert(model).values(rows)
        return upsert.on_duplicate_key_update(value_json=upsert.inserted.value_json)
    from sqlalchemy.dialects import postgresql, sqlite

    stmt = sqlite.insert(model) if dialect == "sqlite" else postgresql.insert(model)
    stmt = stmt.values(rows)
    return stmt.on_conflict_do_update(
        index_elements=[model.trial_id, model.key], set_={"value_json": stmt.excluded.value_json}
    )


def _write_rdb(
    rdb: RDBStorage,
    dialect: str,
    trial_id: int,
    user_attrs: dict[str, Any],
    system_attrs: dict[str, Any],
    params: dict[str, tuple[float, BaseDistribution]],
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
