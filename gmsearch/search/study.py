"""Creating and opening studies: Optuna owns storage, trial states and plots.

``create_study`` maximises by default (fitness), resumes an existing study
of the same name, and on RDB storages (SQLite, PostgreSQL, MySQL) turns on
Optuna's heartbeat with :class:`RequeueTrial` (Optuna's
``RetryHeartbeatStaleTrialCallback`` without the failed run's outcome): a
trial whose worker died is failed and re-queued with its system attrs, so the
retry keeps its genome and parent. Through a gRPC storage proxy (``grpc://HOST:PORT``)
the same is done by gmsearch's heartbeat written as trial attrs
(``gmsearch.search.grpc_proxy``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import optuna
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

from gmsearch.errors import EnvironmentProblem, UsageError
from gmsearch.search.schema import (
    ADV_ACC,
    BEAT_KEY,
    CLEAN_ACC,
    FAIL_REASON_KEY,
    INHERITED_KEY,
    PRUNE_SHADOW_KEY,
    REPLACED_KEY,
    RIVAL_KEY,
    TOLD_FAIL_KEY,
    WEIGHTS_KEY,
    WOULD_PRUNE_KEY,
)

logger = logging.getLogger(__name__)

#: User attrs a trial's run writes (its outcome): a re-queued copy starts without them.
RUN_USER_ATTRS = frozenset({
    FAIL_REASON_KEY, WEIGHTS_KEY, INHERITED_KEY, RIVAL_KEY, WOULD_PRUNE_KEY, PRUNE_SHADOW_KEY, REPLACED_KEY,
    CLEAN_ACC, ADV_ACC, "epochs", "params", "train_seconds",
})
#: System attrs of a failed run: failed by its own worker, its last beat through the gRPC proxy.
RUN_SYSTEM_ATTRS = frozenset({TOLD_FAIL_KEY, BEAT_KEY})


class RequeueTrial(RetryHeartbeatStaleTrialCallback):
    """Re-queue a failed trial as a WAITING copy that starts as the trial was sampled.

    As Optuna's ``RetryHeartbeatStaleTrialCallback`` (used for stale trials on
    RDB storages and for children stopped by Ctrl-C): the copy keeps the
    params, the system attrs (genome) and the user attrs (parent, generation,
    epochs), and gets ``failed_trial`` (the first trial of the series) and
    ``retry_history`` (every earlier trial of it). Unlike it, what the failed
    run wrote (:data:`RUN_USER_ATTRS`, :data:`RUN_SYSTEM_ATTRS`: its fail
    reason, the told-fail mark, metrics) is left out, so a completed retry
    reads as completed, and ``retry_history`` is a new list: the failed
    trial's own, read with ``deepcopy=False``, is never changed.

    Args:
        max_retry: How many times one series is re-queued (None: always).
    """

    def __init__(self, max_retry: int | None = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry)
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", ()), trial.number]
        if self.max_retry is not None and len(history) > self.max_retry:
            return
        system = {k: v for k, v in trial.system_attrs.items() if k not in RUN_SYSTEM_ATTRS}
        system.update(failed_trial=history[0], retry_history=history)
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=dict(trial.params),
            distributions=dict(trial.distributions),
            user_attrs={k: v for k, v in trial.user_attrs.items() if k not in RUN_USER_ATTRS},
            system_attrs=system,
        ))

DEFAULT_STORAGE = "sqlite:///gmsearch.db"


def _with_installed_postgres_driver(url: str) -> str:
    """``postgresql://`` names SQLAlchemy's default driver, psycopg2; use psycopg 3 when only it is installed."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or importlib.util.find_spec("psycopg2") is not None:
        return url
    if importlib.util.find_spec("psycopg") is None:
        raise ValueError(
            f"storage {url!r} needs a PostgreSQL driver: pip install 'psycopg[binary]' (or gmsearch[postgres])"
        )
    return f"postgresql+psycopg{sep}{rest}"


_SCHEMES = "sqlite:///FILE, postgresql://USER:PASS@HOST/DB, mysql://..., journal:FILE or grpc://HOST:PORT"
_SQLITE_HEADER = b"SQLite format 3\x00"


def _scheme(url: str) -> str:
    if url.startswith("journal:"):
        return "journal"
    scheme = url.partition("://")[0] if "://" in url else ""
    return scheme.split("+")[0]


def check_storage(url: str, *, must_exist: bool = False, connect_timeout: int = 5) -> None:
    """Fail fast, in one line, on a storage URL that cannot work; creates nothing.

    Checks the scheme; for SQLite and journal files that their folder exists
    and an existing SQLite file is a sound database; for PostgreSQL and MySQL
    that the server answers within ``connect_timeout`` seconds.

    Raises:
        UsageError: an unsupported URL scheme.
        EnvironmentProblem: a missing folder or file (``must_exist``), a corrupt
            SQLite file, an unreachable database server.
    """
    scheme = _scheme(url)
    if scheme not in {"sqlite", "postgresql", "postgres", "mysql", "journal", "grpc"}:
        raise UsageError(f"storage {mask_url(url)!r}: unsupported URL scheme {scheme or '(none)'!r}; use {_SCHEMES}")
    if scheme in ("sqlite", "journal"):
        raw = url[len("sqlite:///") :] if scheme == "sqlite" else url[len("journal:") :]
        if raw in ("", ":memory:"):
            return
        file = Path(raw)
        if not file.exists():
            if must_exist:
                raise UsageError(f"storage {url!r}: no such file {str(file)!r}")
            if not file.parent.is_dir():
                raise UsageError(f"storage {url!r}: folder {str(file.parent)!r} does not exist")
            return
        if scheme == "sqlite":
            _check_sqlite_file(url, file)
    elif scheme in ("postgresql", "postgres", "mysql"):
        _check_server(url, connect_timeout)


def _check_sqlite_file(url: str, file: Path) -> None:
    import sqlite3

    if not file.is_file():
        raise EnvironmentProblem(f"storage {url!r}: {str(file)!r} is not a file")
    with file.open("rb") as handle:
        header = handle.read(len(_SQLITE_HEADER))
    if file.stat().st_size and header != _SQLITE_HEADER:
        raise EnvironmentProblem(f"storage {url!r}: {str(file)!r} is not a SQLite database (corrupt or another format)")
    try:
        with sqlite3.connect(f"file:{file}?mode=ro", uri=True) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as exc:
        raise EnvironmentProblem(f"storage {url!r}: the SQLite file {str(file)!r} is corrupt ({exc})") from None
    if verdict is None or verdict[0] != "ok":
        raise EnvironmentProblem(f"storage {url!r}: the SQLite file {str(file)!r} is corrupt ({verdict})")


def _check_server(url: str, timeout: int) -> None:
    import sqlalchemy

    driver_url = _with_installed_postgres_driver(url) if _scheme(url) != "mysql" else url
    args = {"connect_timeout": timeout}
    try:
        engine = sqlalchemy.create_engine(driver_url, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except ModuleNotFoundError as exc:
        raise EnvironmentProblem(f"storage {mask_url(url)!r} needs a database driver: {exc}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EnvironmentProblem(f"storage {mask_url(url)!r}: cannot connect ({first})") from None


def make_storage(
    storage: str | BaseStorage | None,
    *,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    max_retry: int | None = 3,
) -> BaseStorage | None:
    """An Optuna storage for ``storage``: RDB URLs get heartbeat + retry of stale trials.

    ``None`` stays in-memory; ``journal:PATH`` opens a journal file storage;
    ``postgresql://`` uses psycopg 3 when psycopg2 is not installed;
    ``grpc://HOST:PORT`` opens a ``gmsearch storage-server`` (Optuna's gRPC
    proxy) with gmsearch's heartbeat through it (see ``gmsearch.search.grpc_proxy``).

    Args:
        storage: URL, Optuna storage (returned as is) or None.
        heartbeat_interval: Seconds between heartbeats of running trials on
            RDB and gRPC proxy storages (None or 0: no heartbeat).
        grace_period: Seconds without heartbeat before a trial is stale
            (None: twice the interval).
        max_retry: How many times a stale trial is re-queued (None: always).
    """
    if storage is None or isinstance(storage, BaseStorage):
        return storage
    if not isinstance(storage, str):
        raise TypeError(f"storage must be a URL string or an Optuna storage, got {type(storage).__name__}")
    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(storage[len("journal:") :]))
    if storage.startswith("grpc://"):  # a `gmsearch storage-server`: the heartbeat goes through it as trial attrs
        from gmsearch.search.grpc_proxy import grpc_storage

        return grpc_storage(
            storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry
        )
    if "://" not in storage:
        raise ValueError(
            f"storage {storage!r} is not a database URL; use e.g. 'sqlite:///gmsearch.db', "
            "'postgresql://user:pass@host/db', 'grpc://host:13000' or 'journal:path.log'"
        )
    storage = _with_installed_postgres_driver(storage)
    engine_kwargs: dict[str, Any] = {}
    if storage.startswith("sqlite"):
        # Several processes on one SQLite file: wait for locks instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings():
        # heartbeat and its retry callback are marked experimental; we rely on them knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        kwargs: dict[str, Any] = {}
        if heartbeat_interval:
            kwargs = {
                "heartbeat_interval": heartbeat_interval,
                "grace_period": grace_period,
                "heartbeat_stale_trial_callback": RequeueTrial(max_retry=max_retry),
            }
        rdb = RDBStorage(storage, engine_kwargs=engine_kwargs, **kwargs)
    if storage.startswith("sqlite") and sqlite_wal_is_safe(storage):
        _use_wal(rdb)
    return rdb


#: File systems where SQLite's write-ahead log is unsafe: it needs shared memory, so every
#: process must be on the machine that holds the file.
NETWORK_FILE_SYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "lustre", "gpfs", "beegfs", "ceph",
    "glusterfs", "panfs", "davfs", "fuse.sshfs", "fuse.s3fs", "fuse.glusterfs", "fuse.cephfs", "fuse.gcsfuse",
})


def file_system_of(path: Path, mounts: str | None = None) -> str | None:
    """The type of the file system holding ``path``, from ``mounts`` (default: Linux ``/proc/mounts``).

    None where the mount table cannot be read (not Linux).
    """
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    resolved, best, kind = str(path.resolve()), "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def sqlite_wal_is_safe(url: str) -> bool:
    """Whether the SQLite file of ``url`` may use the write-ahead log: a file on a local disk.

    ``GMSEARCH_SQLITE_WAL=0`` (or ``1``) overrides the detection.
    """
    forced = os.environ.get("GMSEARCH_SQLITE_WAL")
    if forced is not None:
        return forced.strip().lower() not in ("0", "false", "no", "off", "")
    raw = url.partition(":///")[2].split("?")[0]
    if raw in ("", ":memory:"):
        return False
    return file_system_of(Path(raw).absolute().parent) not in NETWORK_FILE_SYSTEMS


def _wal_pragmas(connection: Any, _record: Any) -> None:
    import sqlite3

    try:
        connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError:  # a read-only file (e.g. reported from a read-only copy): keep its mode
        return
    connection.execute("PRAGMA synchronous=NORMAL")


def _use_wal(rdb: RDBStorage) -> None:
    """SQLite in write-ahead-log mode: readers never block the writer and a commit needs no fsync.

    With ``synchronous=NORMAL`` a killed process loses nothing it committed
    (only a power cut can lose the last commits) and the file never corrupts.
    Connections Optuna opened while creating its tables are reopened with the pragmas.
    """
    from sqlalchemy import event

    event.listen(rdb.engine, "connect", _wal_pragmas)
    rdb.engine.dispose()


def create_study(
    *,
    study_name: str | None = None,
    storage: str | BaseStorage | None = DEFAULT_STORAGE,
    sampler: BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    direction: str | None = None,
    directions: Sequence[str] | None = None,
    load_if_exists: bool = True,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
) -> optuna.Study:
    """A plain :class:`optuna.Study` set up for gmsearch.

    Args:
        study_name: Name in the storage (resumed when it exists).
        storage: URL (``sqlite:///gmsearch.db`` by default, ``postgresql://...``
            for many workers, ``grpc://HOST:PORT`` for a ``gmsearch storage-server``,
            ``journal:FILE``), an Optuna storage, or None for in-memory.
        sampler: Usually a :class:`~gmsearch.NicheEvolutionSampler`.
        pruner: Optuna pruner (default: none; GM training reports per epoch).
        direction: ``"maximize"`` (default) or ``"minimize"``.
        directions: For multi-objective studies, e.g. with ``pareto`` fitness.
        load_if_exists: Resume a study of the same name.
        heartbeat_interval: Seconds between heartbeats on RDB and gRPC proxy storages (None: off).
        grace_period: Seconds before a silent trial counts as stale.
    """
    if direction is None and directions is None:
        direction = "maximize"
    return optuna.create_study(
        study_name=study_name,
        storage=make_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period),
        sampler=sampler,
        pruner=pruner or optuna.pruners.NopPruner(),
        direction=cast(Any, direction),  # validated by Optuna, with its own message
        directions=cast(Any, directions),
        load_if_exists=load_if_exists,
    )


def load_study(
    *, study_name: str, storage: str | BaseStorage, sampler: BaseSampler | None = None
) -> optuna.Study:
    """Open an existing study (for reports, export and extra workers)."""
    opened = make_storage(storage)
    assert opened is not None
    return optuna.load_study(study_name=study_name, storage=opened, sampler=sampler)


def mask_url(url: str) -> str:
    """``url`` without its password (for messages and reports)."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def open_study(storage: str | BaseStorage, study_name: str | None = None) -> optuna.Study:
    """Open an existing study for reading (reports, export), with clear errors; creates nothing.

    Args:
        storage: URL (``sqlite:///gmsearch.db``, ``postgresql://...``, ``journal:FILE``) or an Optuna storage.
        study_name: The study; may be omitted when the storage holds exactly one.

    Raises:
        FileNotFoundError: The SQLite or journal file does not exist.
        ValueError: No study of that name; the message lists the studies the storage holds.
    """
    if isinstance(storage, str):
        check_storage(storage, must_exist=True)
    opened = make_storage(storage, heartbeat_interval=None)  # read only: no heartbeat, no retries
    assert opened is not None
    where = mask_url(storage) if isinstance(storage, str) else type(storage).__name__
    names = optuna.get_all_study_names(opened)
    available = ", ".join(repr(n) for n in names) if names else "none"
    if study_name is None:
        if len(names) != 1:
            raise ValueError(f"storage {where} holds {len(names)} studies; choose one with --study: {available}")
        study_name = names[0]
    if study_name not in names:
        raise ValueError(f"no study named {study_name!r} in storage {where}; available studies: {available}")
    return optuna.load_study(study_name=study_name, storage=opened, sampler=optuna.samplers.RandomSampler())
