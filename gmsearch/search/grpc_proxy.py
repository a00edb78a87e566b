"""Many workers through Optuna's gRPC storage proxy, with a heartbeat that survives ``kill -9``.

``gmsearch storage-server --storage postgresql://... --port N`` (:func:`serve`)
runs :func:`optuna.storages.run_grpc_proxy_server`: one process, one database
connection pool, any number of workers. A worker opens it as
``grpc://host:N`` (:func:`grpc_storage`).

Optuna 5.0's :class:`~optuna.storages.GrpcStorageProxy` has no heartbeat, so
the trial of a worker killed with SIGKILL would stay RUNNING forever. The
heartbeat here is written with the public storage API only, so it passes
through the proxy unchanged:

- *Beat.* While a trial runs, its worker writes the system attr
  ``gmsearch:beat`` (its wall clock, unix seconds) every ``heartbeat_interval``
  seconds with ``set_trial_system_attr``.
- *Stale.* A RUNNING trial is stale when its last beat is older than
  ``grace_period`` by the clock of the worker that looks (clocks of the
  machines must agree to well within the grace period, as NTP keeps them).
  A RUNNING trial that never beat (its worker died between taking the trial
  and the first beat, a few milliseconds) is stale once the looking process
  has seen it silent for ``grace_period`` (its own monotonic observation: no
  clocks compared).
- *Fail and re-queue.* Any worker fails a stale trial with
  ``set_trial_state_values(FAIL)``; the storage lets exactly one of several
  racing workers do so (the others get ``UpdateFinishedTrialError``), and only
  that one re-queues it with :class:`~gmsearch.search.study.RequeueTrial`, as
  on every storage: a WAITING copy with the params, user attrs and system
  attrs (genome, parent) plus ``failed_trial`` and ``retry_history``, what the
  dead run wrote left out, its last beat included (a copied beat would make
  the retry look stale before its first own beat).

:class:`BeatHeartbeat` implements these three steps as Optuna's heartbeat
interface (``BaseHeartbeat``) on top of any storage, so Optuna's own machinery
drives them exactly as it does for ``RDBStorage``: ``study.optimize`` fails
stale trials before each new trial and runs a beat thread around each
objective call, :class:`~gmsearch.NicheEvolutionSampler` beats and fails
stale trials while a surplus trial waits, and the runner knows it has a
heartbeat. A trial failed this way is the "re-queue pending" FAIL trial of the
sampler's census, exactly as with ``RDBStorage`` (see :func:`gmsearch.search.census.requeue_pending`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, GrpcStorageProxy
from optuna.trial import FrozenTrial, TrialState

from gmsearch.search._optuna_private import Heartbeat, trial_id_of, with_optuna_cache
from gmsearch.search.schema import BEAT_KEY
from gmsearch.search.study import RequeueTrial

logger = logging.getLogger(__name__)

GRPC_SCHEME = "grpc://"
DEFAULT_PORT = 13000
#: How long opening ``grpc://host:port`` waits for the storage server to answer.
CONNECT_TIMEOUT = 60.0


class BeatHeartbeat(Heartbeat):
    """Optuna's heartbeat interface through the public storage API (mix in before a ``BaseStorage``).

    Subclasses combine it with a storage, e.g.
    ``class S(BeatHeartbeat, GrpcStorageProxy)``, and call :meth:`_init_heartbeat`.
    """

    _heartbeat_interval: int | None
    _grace_period: float
    _stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None
    _clock: Callable[[], float]
    _monotonic: Callable[[], float]
    _silent_since: dict[int, dict[int, float]]

    def _init_heartbeat(
        self,
        heartbeat_interval: int | None,
        grace_period: float | None = None,
        max_retry: int | None = 3,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise ValueError(f"heartbeat_interval must be > 0 or None, got {heartbeat_interval}")
        if grace_period is not None and grace_period <= 0:
            raise ValueError(f"grace_period must be > 0 or None, got {grace_period}")
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = float(grace_period or 2 * (heartbeat_interval or 0))
        self._stale_callback = _RetryWithoutBeat(max_retry=max_retry) if heartbeat_interval else None
        self._clock = clock
        self._monotonic = monotonic
        self._silent_since = {}  # study id -> trial id -> when this process first saw it RUNNING without a beat

    def _storage(self) -> BaseStorage:
        assert isinstance(self, BaseStorage), "BeatHeartbeat must be mixed into a BaseStorage"
        return self

    # --- Optuna's heartbeat interface -----------------------------------------------------------
    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self._storage().set_trial_system_attr(trial_id, BEAT_KEY, self._clock())
        except UpdateFinishedTrialError:
            pass  # finished meanwhile, or failed as stale by another worker (which re-queued it)
        except Exception as exc:  # e.g. the proxy restarting: one missed beat is harmless, a dead beat thread is not
            logger.warning("heartbeat of trial id %d not recorded: %s", trial_id, exc)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        return stale_trial_ids(
            self._storage().get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)),
            grace_period=self._grace_period, now=self._clock(), seen_now=self._monotonic(),
            silent_since=self._silent_since.setdefault(study_id, {}),
        )

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_callback


def stale_trial_ids(
    running: list[FrozenTrial],
    *,
    grace_period: float,
    now: float,
    seen_now: float,
    silent_since: dict[int, float],
) -> list[int]:
    """Ids of the ``running`` trials whose heartbeat is older than ``grace_period``.

    Args:
        running: The study's RUNNING trials.
        grace_period: Seconds of silence after which a trial is stale.
        now: Wall clock (unix seconds), compared with the stored beats.
        seen_now: Monotonic clock of this process, for trials that never beat.
        silent_since: Per trial id, when this process first saw it without a beat;
            updated in place (finished trials are dropped).
    """
    stale = []
    ids = {trial_id_of(t) for t in running}
    for trial_id in [i for i in silent_since if i not in ids]:
        del silent_since[trial_id]
    for t in running:
        beat = t.system_attrs.get(BEAT_KEY)
        if isinstance(beat, int | float):
            silent_since.pop(trial_id_of(t), None)
            silent = now - float(beat)
        else:
            silent = seen_now - silent_since.setdefault(trial_id_of(t), seen_now)
        if silent > grace_period:
            stale.append(trial_id_of(t))
    return stale


class _RetryWithoutBeat(RequeueTrial):
    """The re-queue of a stale trial every storage uses (:class:`RequeueTrial`: the dead worker's last beat and
    what its run wrote are left out), with a warning naming the trial."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        logger.warning("trial %d of study %s is stale (no heartbeat): failed, re-queued", trial.number,
                       study.study_name)
        super().__call__(study, trial)


class HeartbeatGrpcStorageProxy(BeatHeartbeat, GrpcStorageProxy):
    """:class:`~optuna.storages.GrpcStorageProxy` with :class:`BeatHeartbeat`."""

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = DEFAULT_PORT,
        heartbeat_interval: int | None = 60,
        grace_period: float | None = None,
        max_retry: int | None = 3,
    ) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            GrpcStorageProxy.__init__(self, host=host, port=port)
        self._init_heartbeat(heartbeat_interval, grace_period, max_retry)


def parse_grpc_url(url: str) -> tuple[str, int]:
    """``grpc://host:port`` -> ``(host, port)`` (port 13000 when omitted)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "grpc" or not parts.hostname or port == -1 or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        raise ValueError(f"storage {url!r}: a gRPC storage proxy is written grpc://HOST:PORT, e.g. grpc://node1:13000")
    return parts.hostname, port if port is not None else DEFAULT_PORT


def grpc_storage(
    url: str,
    *,
    heartbeat_interval: int | None = 60,
    grace_period: float | None = None,
    max_retry: int | None = 3,
    timeout: float = CONNECT_TIMEOUT,
) -> GrpcStorageProxy:
    """Open ``grpc://host:port`` (a ``gmsearch storage-server``); with the heartbeat unless it is off.

    Raises:
        ValueError: the URL is malformed, grpcio is missing, or no server answers within ``timeout`` seconds.
    """
    host, port = parse_grpc_url(url)
    _require_grpc(url)
    storage: GrpcStorageProxy
    if heartbeat_interval:
        storage = HeartbeatGrpcStorageProxy(
            host=host, port=port, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
            max_retry=max_retry,
        )
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = GrpcStorageProxy(host=host, port=port)
    try:
        storage.wait_server_ready(timeout=timeout)
    except ConnectionError as exc:
        storage.close()
        raise ValueError(
            f"storage {url}: no gRPC storage proxy answers at {host}:{port} within {timeout:g} s; "
            f"start one with: gmsearch storage-server --storage postgresql://... --host 0.0.0.0 --port {port}"
        ) from exc
    return storage


def _require_grpc(url: str) -> None:
    try:
        import google.protobuf  # noqa: F401
        import grpc  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"storage {url} needs grpcio and protobuf: pip install 'gmsearch[grpc]'") from exc


def serve(
    storage: str,
    *,
    host: str = "localhost",
    port: int = DEFAULT_PORT,
    threads: int = 10,
    ready: Callable[[str], Any] | None = None,
) -> None:
    """Serve the database ``storage`` to workers as ``grpc://host:port`` until killed (``gmsearch storage-server``).

    Args:
        storage: A database URL (``postgresql://...``, ``mysql://...``, ``sqlite:///...``).
        host: Interface to listen on (``0.0.0.0``: every interface, for other machines).
        port: TCP port.
        threads: Requests served at once (one database connection each at most).
        ready: Called with a one-line message just before the server starts.
    """
    from gmsearch.search.study import make_storage

    if not isinstance(storage, str) or "://" not in storage or storage.startswith(GRPC_SCHEME):
        raise ValueError(
            f"storage-server needs a database URL (postgresql://, mysql://, sqlite:///), got {storage!r}"
        )
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    _require_grpc(storage)
    # the server only relays: heartbeats are written by the workers through it
    backend = make_storage(storage, heartbeat_interval=None)
    assert backend is not None
    cached = with_optuna_cache(backend)  # Optuna's in-process cache of finished trials
    if ready is not None:
        ready(f"gmsearch storage-server: serving {_mask(storage)} at grpc://{host}:{port}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            optuna.storages.run_grpc_proxy_server(
                cached, host=host, port=port, thread_pool=ThreadPoolExecutor(max_workers=threads)
            )
        except RuntimeError as exc:
            if "bind" not in str(exc):
                raise
            raise ValueError(f"storage-server cannot listen on {host}:{port} (port in use?): {exc}") from exc


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url
