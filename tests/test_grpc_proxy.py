"""Optuna's gRPC storage proxy: ``gmsearch storage-server`` and ``grpc://`` storages with gmsearch's heartbeat.

The heartbeat through the proxy is written as trial system attrs
(``gmsearch.search.grpc_proxy``); its stale-trial detection and re-queue are tested
here on an in-memory storage with fake clocks. The end-to-end test runs a
real proxy server (a subprocess) in front of PostgreSQL when
GMSEARCH_TEST_POSTGRES_URL is set (``.ci/run`` sets it) and grpcio is
installed: 8 worker processes, one killed with SIGKILL mid-trial.

Workers are forked from this process, as in tests/test_workers.py; this
process itself never opens a gRPC channel (gRPC does not survive fork), it
watches the study directly in PostgreSQL.
"""

from __future__ import annotations

import gc
import importlib.util
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from _worker_helpers import in_child, join_all, wait_for, work_until_finished
from optuna.storages import InMemoryStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

import gmsearch as gms
from gmsearch import cli, runner
from gmsearch.search.grpc_proxy import BEAT_KEY, BeatHeartbeat, parse_grpc_url, serve, stale_trial_ids
from gmsearch.search.schema import GENOME_KEY, PARENT_KEY, SURPLUS_KEY
from gmsearch.search.study import make_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

POSTGRES_URL = os.environ.get("GMSEARCH_TEST_POSTGRES_URL")
HAS_GRPC = importlib.util.find_spec("grpc") is not None and importlib.util.find_spec("google.protobuf") is not None
ROOT = Path(__file__).resolve().parents[1]


# --- stale-trial detection and re-queue, no gRPC ---------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class _BeatingMemory(BeatHeartbeat, InMemoryStorage):
    """The proxy's heartbeat on an in-memory storage, with fake clocks."""

    def __init__(self, clock: _Clock, grace: float = 10.0) -> None:
        InMemoryStorage.__init__(self)
        self._init_heartbeat(1, grace, max_retry=3, clock=clock, monotonic=clock)


def _running(trial_id: int, number: int, beat: float | None) -> FrozenTrial:
    attrs = {} if beat is None else {BEAT_KEY: beat}
    return optuna.trial.FrozenTrial(
        number=number, state=TrialState.RUNNING, value=None, datetime_start=None, datetime_complete=None,
        params={}, distributions={}, user_attrs={}, system_attrs=attrs, intermediate_values={}, trial_id=trial_id,
    )


def test_stale_trials_are_those_silent_longer_than_the_grace_period() -> None:
    silent: dict[int, float] = {}
    trials = [_running(1, 0, 995.0), _running(2, 1, 985.0), _running(3, 2, None)]
    assert stale_trial_ids(trials, grace_period=10, now=1000.0, seen_now=50.0, silent_since=silent) == [2]
    assert silent == {3: 50.0}  # never beat: timed from when this process first saw it
    assert stale_trial_ids(trials, grace_period=10, now=1000.0, seen_now=59.0, silent_since=silent) == [2]
    assert stale_trial_ids(trials, grace_period=10, now=1000.0, seen_now=61.0, silent_since=silent) == [2, 3]
    trials[2] = _running(3, 2, 1000.0)  # it beat after all
    assert stale_trial_ids(trials, grace_period=10, now=1001.0, seen_now=62.0, silent_since=silent) == [2]
    assert silent == {}
    assert stale_trial_ids([_running(4, 3, None)], grace_period=10, now=0, seen_now=0, silent_since=silent) == []
    assert stale_trial_ids([], grace_period=10, now=0, seen_now=0, silent_since=silent) == [] and silent == {}


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with Study.optimize"
        return study.ask()


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def test_a_silent_trial_is_failed_once_and_requeued_with_its_genome() -> None:
    clock = _Clock()
    storage = _BeatingMemory(clock, grace=10.0)
    sampler = gms.NicheEvolutionSampler(population_size=2, n_children=1, min_distance=2.0, generations=1, seed=0)
    study = gms.create_study(storage=storage, sampler=sampler)
    assert study._storage is storage and is_heartbeat_enabled(storage)
    alive, dead = _ask(study), _ask(study)  # before_trial beats and writes the genome
    assert storage.get_trial(dead._trial_id).system_attrs[BEAT_KEY] == clock.t
    clock.t += 8
    storage.record_heartbeat(alive._trial_id)  # the live worker's beat thread; the dead one is silent
    _fail_stale(study)
    assert storage.get_trial(dead._trial_id).state == TrialState.RUNNING  # 8 s < grace
    clock.t += 5
    _fail_stale(study)
    _fail_stale(study)  # a second look (another worker) neither fails nor re-queues it again
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING]
    killed, retry = trials[1], trials[2]
    assert retry.system_attrs[GENOME_KEY] == killed.system_attrs[GENOME_KEY]
    assert retry.user_attrs[PARENT_KEY] == killed.user_attrs[PARENT_KEY]
    assert retry.params == killed.params
    assert retry.system_attrs["failed_trial"] == killed.number and retry.system_attrs["retry_history"] == [1]
    assert BEAT_KEY not in retry.system_attrs  # the dead worker's beat would make the retry stale at once
    # the retry is the next trial asked for, with the same genome; the study then finishes normally
    again = _ask(study)
    assert again.number == retry.number and gms.genome_of(again).to_json() == killed.system_attrs[GENOME_KEY]
    assert BEAT_KEY in storage.get_trial(again._trial_id).system_attrs
    for trial in (alive, again):
        study.tell(trial, 1.0)
    # writing the beat of a finished trial (a late beat-thread tick) is silently ignored
    storage.record_heartbeat(again._trial_id)
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]


def test_racing_workers_requeue_a_stale_trial_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    storage = _BeatingMemory(clock, grace=2.0)
    study = gms.create_study(storage=storage, sampler=gms.NicheEvolutionSampler(population_size=2, seed=1))
    trial = _ask(study)
    clock.t += 3
    stale = storage._get_stale_trial_ids(study._study_id)
    assert stale == [trial._trial_id]
    _fail_stale(study)  # the first worker fails and re-queues it
    # a second worker that saw it stale a moment earlier tries too: the storage refuses the second FAIL
    monkeypatch.setattr(storage, "_get_stale_trial_ids", lambda study_id: stale)
    _fail_stale(study)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]


def test_grpc_urls_and_the_storage_server_command() -> None:
    assert parse_grpc_url("grpc://node7:14000") == ("node7", 14000)
    assert parse_grpc_url("grpc://127.0.0.1") == ("127.0.0.1", 13000)
    assert parse_grpc_url("grpc://[::1]:5000/") == ("::1", 5000)
    for bad in ("grpc://", "grpc://host:port", "grpc://host:1/db", "grpc://host:1?x=1"):
        with pytest.raises(ValueError, match="grpc://HOST:PORT"):
            make_storage(bad)
    for url in ("grpc://h:1", "journal:x.log", "gmsearch.db"):
        with pytest.raises(ValueError, match="database URL"):
            serve(url)
    args = cli.make_parser().parse_args(["storage-server", "--storage", "postgresql://u:p@h/db", "--port", "9"])
    assert (args.storage, args.host, args.port, args.threads) == ("postgresql://u:p@h/db", "localhost", 9, 10)
    assert runner.shared_storage_warning("grpc://h:1", 64) is None


# --- 8 workers through a real proxy in front of PostgreSQL, one killed mid-trial -------------------

S, N, G = 4, 2, 2
PLANNED = gms.n_trials_for(G, S, N)  # 20
HEARTBEAT, GRACE = 1, 5  # seconds; a loaded 2-core CI box delays writes by seconds


TIMEOUT = 120  # seconds all workers of a test may take together


def _sampler() -> gms.NicheEvolutionSampler:
    return gms.NicheEvolutionSampler(population_size=S, n_children=N, min_distance=3.0, generations=G, seed=5)


def _open(url: str, name: str) -> optuna.Study:
    return gms.create_study(
        study_name=name, storage=url, sampler=_sampler(), heartbeat_interval=HEARTBEAT, grace_period=GRACE
    )


def _work(url: str, name: str, seconds: float, child_seconds: float | None = None) -> None:
    work_until_finished(_open(url, name), seconds, child_seconds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxy() -> Iterator[str]:
    """``gmsearch storage-server`` in front of the test PostgreSQL, as a subprocess; yields its grpc:// URL."""
    if not POSTGRES_URL:
        pytest.skip("GMSEARCH_TEST_POSTGRES_URL is not set")
    if not HAS_GRPC:
        pytest.skip("grpcio is not installed (pip install 'gmsearch[grpc]')")
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs fork (Linux)")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    server = subprocess.Popen(
        [sys.executable, "-m", "gmsearch.cli", "storage-server", "--storage", POSTGRES_URL,
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            out, _ = server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
        assert "gmsearch storage-server: serving postgresql+psycopg://gmsearch:***@" in out, out[-3000:]


def test_eight_workers_through_the_proxy_one_killed_mid_trial(proxy: str) -> None:
    assert POSTGRES_URL is not None
    name = f"grpc-{uuid.uuid4().hex[:8]}"
    creator = in_child(_open, proxy, name)  # also waits for the server to answer
    creator.join(90)
    assert creator.exitcode == 0
    # worker 0 (the victim) runs initial candidates at once, then trains its first child "forever"
    victim = in_child(_work, proxy, name, 0.05, 60.0)
    others = [in_child(_work, proxy, name, 0.3) for _ in range(7)]
    # this process watches in PostgreSQL directly (no gRPC channel here: later tests fork)
    watcher = optuna.load_study(study_name=name, storage=make_storage(POSTGRES_URL, heartbeat_interval=None))
    try:
        killed = wait_for(
            watcher, lambda t: t.state == TrialState.RUNNING and t.user_attrs.get("pid") == victim.pid
            and t.user_attrs.get(PARENT_KEY) is not None and BEAT_KEY in t.system_attrs, "the victim's first child",
            timeout=60,
        )
        wait_for(watcher, lambda t: t.state == TrialState.COMPLETE and t.user_attrs.get("pid") != victim.pid,
                 "a trial of the other workers", timeout=60)
        os.kill(victim.pid, signal.SIGKILL)  # mid-trial, while the others are busy
        join_all([victim, *others], TIMEOUT)
        assert victim.exitcode == -signal.SIGKILL
        assert [w.exitcode for w in others] == [0] * 7

        trials = watcher.get_trials()
        assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        done = [t for t in trials if t.state == TrialState.COMPLETE and GENOME_KEY in t.system_attrs]
        children = [t for t in done if t.user_attrs[PARENT_KEY] is not None]
        assert (len(done), len(children)) == (PLANNED, G * S * N)
        # every planned trial completed exactly once (a retry stands in for the trial it retries)
        per_slot = Counter(t.system_attrs.get("failed_trial", t.number) for t in done)
        assert len(per_slot) == PLANNED and set(per_slot.values()) == {1}
        by_number = {t.number: t for t in trials}
        assert by_number[killed.number].state == TrialState.FAIL  # failed through the proxy's heartbeat
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
        assert len(retries) == 1
        retry = retries[0]
        assert retry.state == TrialState.COMPLETE and retry.user_attrs["pid"] != victim.pid
        assert retry.system_attrs[GENOME_KEY] == killed.system_attrs[GENOME_KEY]
        assert retry.user_attrs[PARENT_KEY] == killed.user_attrs[PARENT_KEY]
        assert retry.system_attrs[BEAT_KEY] > killed.system_attrs[BEAT_KEY]  # its own beats, not the copy
        assert {t.number for t in trials if t.state == TrialState.FAIL} == {killed.number}
        extra = [t for t in trials if GENOME_KEY not in t.system_attrs]
        assert all(t.state == TrialState.PRUNED and t.system_attrs[SURPLUS_KEY] for t in extra)
        assert len({t.user_attrs["pid"] for t in done}) > 2, "work was shared"
        assert len(gms.population(watcher)) == S and _sampler().is_finished(watcher)
    finally:
        del watcher
        gc.collect()
        optuna.delete_study(study_name=name, storage=POSTGRES_URL)
