"""Every use of Optuna's private names in gmsearch, in this one module (Optuna has no public API for them).

- ``Study._storage``, ``Study._study_id``, ``Trial._trial_id`` / ``FrozenTrial._trial_id``: the storage
  calls a study or trial does not offer (study system attrs, attrs of a ``FrozenTrial`` a sampler
  or pruner is handed, ``set_trial_param`` ...) need the storage and the ids
  (:func:`storage_of`, :func:`study_id_of`, :func:`trial_id_of`).
- ``_CachedStorage._backend`` and ``JournalStorage._backend._file_path``: where a study's database or
  journal file is, for the default artifact folder beside it (:func:`unwrap`, :func:`journal_file_of`);
  ``optuna.storages.get_storage`` (internal by its docstring): the gRPC server's cache
  (:func:`with_optuna_cache`).
- ``optuna.storages._heartbeat``: Optuna's heartbeat interface. :class:`Heartbeat` is the base of a
  storage with a heartbeat of its own (``study.optimize`` then fails stale trials and beats around
  each objective call); :func:`heartbeat_interval` and :func:`record_heartbeat` use any storage's.
- :data:`OPTIMIZE_LOGGER`: the logger ``study.optimize`` reports a failed trial on.
- ``_BracketStudy._study``: a study's ``pruner`` that is a ``HyperbandPruner`` makes Optuna hand the
  sampler a per-bracket view of the study; :func:`whole_study` gives the study itself.

``tests/test_optuna_private.py`` exercises each of them. Names Optuna must have are checked when this
module is imported; an Optuna without them stops gmsearch with one line naming the installed
version and the tested ones (:data:`TESTED`), and so does an accessor whose attribute is gone.
Optuna's versions are bounded in ``pyproject.toml`` to those the tests ran on.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.study import Study
from optuna.trial import FrozenTrial, Trial

__all__ = [
    "OPTIMIZE_LOGGER",
    "REQUIREMENT",
    "TESTED",
    "Heartbeat",
    "IncompatibleOptunaError",
    "heartbeat_interval",
    "is_heartbeat_enabled",
    "journal_file_of",
    "record_heartbeat",
    "storage_of",
    "study_id_of",
    "trial_id_of",
    "unwrap",
    "whole_study",
    "with_optuna_cache",
]

#: The Optuna releases gmsearch's tests ran on, and the requirement in ``pyproject.toml`` that allows them.
TESTED = "4.9, 5.0 and 5.1"
REQUIREMENT = "optuna>=4.9,<5.2"
#: The logger of ``study.optimize``'s "Trial N failed" lines (the runner filters them).
OPTIMIZE_LOGGER = "optuna.study._optimize"


class IncompatibleOptunaError(ImportError):
    """The installed Optuna lacks a private name gmsearch uses."""


def incompatible(what: str) -> IncompatibleOptunaError:
    """The error for a missing or changed private name ``what``."""
    return IncompatibleOptunaError(
        f"gmsearch needs Optuna's {what}, which the installed optuna {optuna.__version__} does not have; "
        f"install an Optuna gmsearch was tested with ({TESTED}): pip install '{REQUIREMENT}'"
    )


def _missing(what: str) -> NoReturn:
    raise incompatible(what) from None


try:
    from optuna.storages import _CachedStorage
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.storages._heartbeat import is_heartbeat_enabled as _is_heartbeat_enabled
    from optuna.storages.journal import JournalFileBackend
except ImportError:
    _missing("optuna.storages._CachedStorage / optuna.storages._heartbeat (BaseHeartbeat, is_heartbeat_enabled) / "
             "optuna.storages.journal.JournalFileBackend")
for _name in ("record_heartbeat", "_get_stale_trial_ids", "get_heartbeat_interval",
              "get_heartbeat_stale_trial_callback"):
    if not callable(getattr(BaseHeartbeat, _name, None)):
        _missing(f"BaseHeartbeat.{_name}")
if getattr(getattr(sys.modules.get(OPTIMIZE_LOGGER), "_logger", None), "name", None) != OPTIMIZE_LOGGER:
    _missing(f"logger {OPTIMIZE_LOGGER!r} of study.optimize")


# --------------------------------------------------------------------------- studies and trials


def storage_of(study: Study) -> BaseStorage:
    """The storage ``study`` reads and writes (Optuna wraps an RDB storage in its cache)."""
    try:
        storage: BaseStorage = study._storage
    except AttributeError:
        _missing("Study._storage")
    return storage


def study_id_of(study: Study) -> int:
    """``study``'s id in its storage."""
    try:
        study_id: int = study._study_id
    except AttributeError:
        _missing("Study._study_id")
    return study_id


def trial_id_of(trial: Trial | FrozenTrial) -> int:
    """A (running or frozen) trial's id in its storage (its ``number`` counts within the study)."""
    try:
        trial_id: int = trial._trial_id
    except AttributeError:
        _missing(f"{type(trial).__name__}._trial_id")
    return trial_id


def whole_study(study: Study) -> Study:
    """The study itself, when Optuna hands a sampler ``study`` as the per-bracket view a ``HyperbandPruner``
    makes (``optuna.pruners._filter_study``: its ``get_trials`` lists one bracket's trials); else ``study``."""
    inner = getattr(study, "_study", None)  # the view's only way back; a Study has no such attribute
    return inner if isinstance(inner, Study) else study


# --------------------------------------------------------------------------- where a storage keeps its data


def unwrap(storage: BaseStorage) -> BaseStorage:
    """The storage behind Optuna's cache of an RDB storage (``storage`` itself otherwise)."""
    if isinstance(storage, _CachedStorage):
        try:
            backend: BaseStorage = storage._backend
        except AttributeError:
            _missing("_CachedStorage._backend")
        return backend
    return storage


def with_optuna_cache(storage: BaseStorage) -> BaseStorage:
    """``storage`` in Optuna's in-process cache of finished trials, as ``optuna.create_study`` wraps an RDB
    storage (``optuna.storages.get_storage``: public name, documented as for internal use)."""
    return optuna.storages.get_storage(storage)


def journal_file_of(storage: BaseStorage) -> str | None:
    """The file of a journal storage on a file (None for any other storage)."""
    storage = unwrap(storage)
    if not isinstance(storage, JournalStorage):
        return None
    try:
        backend: Any = storage._backend
    except AttributeError:
        _missing("JournalStorage._backend")
    if not isinstance(backend, JournalFileBackend):
        return None
    try:
        path: str = backend._file_path
    except AttributeError:
        _missing("JournalFileBackend._file_path")
    return path


# --------------------------------------------------------------------------- heartbeat


class Heartbeat(BaseHeartbeat):
    """Optuna's heartbeat interface; a subclass implements :meth:`stale_trial_ids` and the public methods
    (``record_heartbeat``, ``get_heartbeat_interval``, ``get_heartbeat_stale_trial_callback``)."""

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """Ids of the study's RUNNING trials whose worker stopped beating."""
        raise NotImplementedError

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)


def is_heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether ``storage`` has a heartbeat (``study.optimize`` then beats and fails stale trials)."""
    return bool(_is_heartbeat_enabled(storage))


def heartbeat_interval(storage: BaseStorage) -> int | None:
    """Seconds between two beats of ``storage``'s heartbeat (None: it has none)."""
    if isinstance(storage, BaseHeartbeat) and _is_heartbeat_enabled(storage):
        interval: int | None = storage.get_heartbeat_interval()
        return interval
    return None


def record_heartbeat(storage: BaseStorage, trial_id: int) -> None:
    """A beat of the running trial ``trial_id`` (nothing when ``storage`` has no heartbeat)."""
    if isinstance(storage, BaseHeartbeat):
        storage.record_heartbeat(trial_id)
