"""Cheap bookkeeping: a trial's writes, SQLite's write-ahead log, the incremental population replay.

PostgreSQL cases run when GMSEARCH_TEST_POSTGRES_URL is set (see tests/test_storage.py).
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

import gmsearch as gms
from gmsearch.search import schema
from gmsearch.search import study as study_module
from gmsearch.search.selection import IncrementalReplay, replay, replay_study
from gmsearch.search.study import check_storage, file_system_of, make_storage, sqlite_wal_is_safe
from gmsearch.search.writes import write_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)

POSTGRES_URL = os.environ.get("GMSEARCH_TEST_POSTGRES_URL")
KINDS = ["memory", "sqlite", "sqlite-rollback", "journal", "postgresql"]


@pytest.fixture
def study_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def make(kind: str) -> optuna.Study:
        url: str | None
        if kind == "memory":
            url = None
        elif kind.startswith("sqlite"):
            monkeypatch.setenv("GMSEARCH_SQLITE_WAL", "0" if kind == "sqlite-rollback" else "1")
            url = f"sqlite:///{tmp_path / f'{kind}.db'}"
        elif kind == "journal":
            url = f"journal:{tmp_path / 'study.log'}"
        else:
            if not POSTGRES_URL:
                pytest.skip("GMSEARCH_TEST_POSTGRES_URL is not set")
            url = POSTGRES_URL
        return gms.create_study(study_name=f"writes-{uuid.uuid4().hex[:8]}", storage=url)

    return make


USER = {"gmsearch:parent": 3, "gmsearch:generation": 2, "gmsearch:architecture": "conv 3x3 x16", "none": None}
SYSTEM = {"gmsearch:genome": '{"blocks": []}', "nested": {"a": [1, 2.5, "x"]}}
PARAMS = {"n_conv": (4.0, IntDistribution(0, 64)), "lr": (0.01, FloatDistribution(1e-4, 1.0, log=True))}
STEPS = {1: 0.25, 2: math.nan, 3: math.inf, 4: -math.inf, 7: 0.5}


def _curve(values: dict[int, float]) -> dict[int, str]:
    return {step: repr(value) for step, value in values.items()}  # nan == nan


@pytest.mark.parametrize("kind", KINDS)
def test_write_trial_stores_what_the_per_attribute_calls_store(kind: str, study_of) -> None:  # type: ignore[no-untyped-def]
    study = study_of(kind)
    storage = study._storage
    by_call, batched = study.ask(), study.ask()
    for name, (value, dist) in PARAMS.items():
        storage.set_trial_param(by_call._trial_id, name, value, dist)
    for key, value in USER.items():
        storage.set_trial_user_attr(by_call._trial_id, key, value)
    for key, value in SYSTEM.items():
        storage.set_trial_system_attr(by_call._trial_id, key, value)
    for step, value in STEPS.items():
        storage.set_trial_intermediate_value(by_call._trial_id, step, value)
    write_trial(storage, batched._trial_id, user_attrs=USER, system_attrs=SYSTEM, params=PARAMS,
                intermediate_values=STEPS)
    a, b = storage.get_trial(by_call._trial_id), storage.get_trial(batched._trial_id)
    assert (b.params, b.distributions, b.user_attrs) == (a.params, a.distributions, a.user_attrs)
    assert {k: b.system_attrs[k] for k in SYSTEM} == {k: a.system_attrs[k] for k in SYSTEM}
    assert _curve(b.intermediate_values) == _curve(a.intermediate_values) == _curve(STEPS)
    # an existing key or step is overwritten, as set_trial_user_attr and set_trial_intermediate_value do
    write_trial(storage, batched._trial_id, user_attrs={"gmsearch:generation": 5}, intermediate_values={2: 0.75})
    storage.set_trial_intermediate_value(by_call._trial_id, 2, 0.75)
    a, b = storage.get_trial(by_call._trial_id), storage.get_trial(batched._trial_id)
    assert b.user_attrs["gmsearch:generation"] == 5
    assert _curve(b.intermediate_values) == _curve(a.intermediate_values) == _curve({**STEPS, 2: 0.75})
    study.tell(batched, 1.0)
    assert study.trials[batched.number].params == {"n_conv": 4, "lr": 0.01}


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgresql"])
def test_writes_to_a_finished_trial_or_a_clashing_distribution_are_refused(kind: str, study_of) -> None:  # type: ignore[no-untyped-def]
    study = study_of(kind)
    storage = study._storage
    first = study.ask()
    write_trial(storage, first._trial_id, params={"n_conv": (1.0, IntDistribution(0, 64))})
    study.tell(first, 0.5)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        write_trial(storage, first._trial_id, user_attrs={"late": 1})
    second = study.ask()
    with pytest.raises(ValueError, match="n_conv|compatib|distribution"):
        write_trial(storage, second._trial_id, params={"n_conv": (0.5, FloatDistribution(0.0, 1.0))})
    assert "late" not in storage.get_trial(first._trial_id).user_attrs
    assert storage.get_trial(second._trial_id).params == {}


def test_a_refused_batch_writes_nothing(study_of) -> None:  # type: ignore[no-untyped-def]
    study = study_of("sqlite")
    storage = study._storage
    first = study.ask()
    write_trial(storage, first._trial_id, params={"n_conv": (1.0, IntDistribution(0, 64))})
    second = study.ask()
    with pytest.raises(ValueError):
        write_trial(storage, second._trial_id, user_attrs={"gmsearch:parent": 0},
                    params={"n_conv": (0.5, FloatDistribution(0.0, 1.0))})
    assert storage.get_trial(second._trial_id).user_attrs == {}


def test_sqlite_on_a_local_disk_uses_the_write_ahead_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GMSEARCH_SQLITE_WAL", raising=False)
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    assert sqlite_wal_is_safe(url) == (file_system_of(tmp_path) not in {"nfs", "nfs4", "cifs"})
    study = gms.create_study(study_name="wal", storage=url)
    study.optimize(lambda t: 1.0, n_trials=2)
    with sqlite3.connect(tmp_path / "wal.db") as db:
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == ("wal" if sqlite_wal_is_safe(url) else "delete")
    monkeypatch.setenv("GMSEARCH_SQLITE_WAL", "0")
    make_storage(f"sqlite:///{tmp_path / 'rollback.db'}")
    with sqlite3.connect(tmp_path / "rollback.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    # the file passes gmsearch's own check (read-only open, quick_check) while in WAL mode
    check_storage(url, must_exist=True)


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
fileserver:/export /shared nfs4 rw,relatime 0 0
/dev/sdb1 /shared/local\\040disk xfs rw 0 0
"""


def test_network_file_systems_keep_the_rollback_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert file_system_of(Path("/home/me/run"), MOUNTS) == "ext4"
    assert file_system_of(Path("/shared/proj"), MOUNTS) == "nfs4"
    assert file_system_of(Path("/shared/local disk/x"), MOUNTS) == "xfs"
    monkeypatch.delenv("GMSEARCH_SQLITE_WAL", raising=False)
    monkeypatch.setattr(study_module, "file_system_of", lambda path, mounts=None: file_system_of(path, MOUNTS))
    assert not sqlite_wal_is_safe("sqlite:////shared/proj/gmsearch.db")
    assert sqlite_wal_is_safe("sqlite:////home/me/gmsearch.db")
    assert not sqlite_wal_is_safe("sqlite:///:memory:")
    monkeypatch.setenv("GMSEARCH_SQLITE_WAL", "1")
    assert sqlite_wal_is_safe("sqlite:////shared/proj/gmsearch.db")


# --------------------------------------------------------------------------- incremental replay

def _trials(n: int, seed: int) -> list[FrozenTrial]:
    """Finished trials of a search's shape: 3 initial candidates, then children, some failed."""
    rng = random.Random(seed)
    genomes = [gms.Genome.from_json(t.system_attrs[schema.GENOME_KEY]) for t in _sampled(8)]
    start = datetime(2026, 1, 1)
    out = []
    for number in range(n):
        state = TrialState.COMPLETE if rng.random() > 0.15 else TrialState.FAIL
        out.append(optuna.trial.create_trial(
            state=state, value=rng.random() if state == TrialState.COMPLETE else None,
            user_attrs={schema.PARENT_KEY: rng.randrange(number) if number >= 3 else None},
            system_attrs={schema.GENOME_KEY: rng.choice(genomes).to_json()},
        ))
        out[-1].number = number
        out[-1].datetime_complete = start + timedelta(seconds=number + rng.random() * 3)  # a few out of order
    return out


def _sampled(n: int) -> list[FrozenTrial]:
    study = optuna.create_study(sampler=gms.NicheEvolutionSampler(population_size=3, seed=1), direction="maximize")
    study.optimize(lambda t: random.random(), n_trials=n)
    return study.trials


def test_incremental_replay_equals_the_replay_from_scratch() -> None:
    trials = _trials(120, seed=0)
    directions = [StudyDirection.MAXIMIZE]
    incremental = IncrementalReplay(3, directions, None)
    arrival = sorted(trials, key=lambda t: t.number)  # seen by trial number: completion order differs
    for seen in range(0, len(arrival) + 1, 7):
        visible = arrival[:seen]
        fresh = replay(visible, 3, directions)
        got = incremental.update(visible)
        assert [t.number for t in got.slots] == [t.number for t in fresh.slots]
        assert got.replaced == fresh.replaced
        extra = arrival[-1]
        with_extra = incremental.update(visible, extra=(extra, [2.0]))
        assert with_extra.replaced == replay(visible, 3, directions, extra=(extra, [2.0])).replaced
    assert 0 < incremental.rebuilds < len(arrival) // 7  # out-of-order arrivals replay from scratch


def test_replay_study_is_cached_per_study_and_stays_exact() -> None:
    sampler = gms.NicheEvolutionSampler(population_size=3, n_children=2, seed=4)
    studies = [optuna.create_study(sampler=sampler, direction=d) for d in ("maximize", "minimize")]
    rng = random.Random(0)
    for _ in range(4):
        for study in studies:
            study.optimize(lambda t: rng.random(), n_trials=5)
            got, fresh = replay_study(study, study.trials, 3), replay(study.trials, 3, study.directions)
            assert [t.number for t in got.slots] == [t.number for t in fresh.slots]
            assert got.replaced == fresh.replaced


def _snapshots(n: int, seed: int) -> list[list[FrozenTrial]]:
    """A growing study seen at successive moments: trials start in number order and finish in another
    order (completed, pruned, failed by their worker, or failed by the heartbeat a moment ago)."""
    rng = random.Random(seed)
    genomes = [t.system_attrs[schema.GENOME_KEY] for t in _sampled(6)]
    now = datetime.now()
    finish = [rng.randrange(i + 1, i + 12) for i in range(n)]
    ends = [rng.choice([TrialState.COMPLETE] * 6 + [TrialState.PRUNED, TrialState.FAIL]) for _ in range(n)]
    recent = {i for i in range(n) if ends[i] == TrialState.FAIL and rng.random() < 0.5}  # within REQUEUE_SECONDS
    values = [rng.random() for _ in range(n)]
    parents = [rng.randrange(i) if i >= 3 else None for i in range(n)]
    snapshots = []
    for moment in range(0, n + 12, 3):
        trials = []
        for number in range(min(moment, n)):
            state = ends[number] if moment >= finish[number] else TrialState.RUNNING
            done = state.is_finished()
            age = 2.0 if number in recent else 3600.0
            system: dict[str, object] = {schema.GENOME_KEY: genomes[number % len(genomes)]}
            if state == TrialState.FAIL and number % 3 == 0:
                system[schema.TOLD_FAIL_KEY] = True
            trials.append(FrozenTrial(
                number=number, state=state, value=None,
                values=[values[number]] if state == TrialState.COMPLETE else None,
                datetime_start=now - timedelta(seconds=age + 60),
                datetime_complete=now - timedelta(seconds=age) if done else None,
                params={}, distributions={}, system_attrs=system, intermediate_values={},
                user_attrs={schema.PARENT_KEY: parents[number]}, trial_id=number,
            ))
        snapshots.append(trials)
    return snapshots


def test_census_and_replay_read_only_the_unsettled_trials_and_stay_exact() -> None:
    """A Settled prefix and the replay's scanned prefix skip the trials that finished for good; every
    census, finished check and replay equals a full pass over the study."""
    from gmsearch.search.census import Settled, census_of, finished

    settled, incremental = Settled(), IncrementalReplay(3, [StudyDirection.MAXIMIZE], None)
    prefixes = []
    for trials in _snapshots(80, seed=3):
        now = datetime.now()
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        for me in [len(trials), *running[:2]]:
            assert census_of(trials, me, 3, now, settled) == census_of(trials, me, 3, now)
        for current, state in [(None, None), *[(n, TrialState.COMPLETE) for n in running[:1]]]:
            assert finished(trials, 3, 20, current=current, current_state=state, settled=settled) == \
                finished(trials, 3, 20, current=current, current_state=state)
        got, fresh = incremental.update(trials), replay(trials, 3, [StudyDirection.MAXIMIZE])
        assert [t.number for t in got.slots] == [t.number for t in fresh.slots] and got.replaced == fresh.replaced
        prefix, rest = settled.split(trials, now)
        assert [t.number for t in rest] == list(range(prefix.n, len(trials)))
        prefixes.append(prefix.n)
    # the prefix grows as trials finish, stops at a trial that is running or failed a moment ago ...
    assert prefixes == sorted(prefixes) and 0 < prefixes[len(prefixes) // 2] < prefixes[-1] < 80
    # ... and a list that does not continue it (another study, fewer trials) is counted from scratch
    short = _snapshots(80, seed=3)[3]
    assert census_of(short, len(short), 3, now, settled) == census_of(short, len(short), 3, now)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "journal"])
def test_write_trial_makes_optuna_s_public_calls_genome_last(kind: str, study_of, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No ORM rows of Optuna's: every write is a public storage call, and system attrs (the genome) come last."""
    study = study_of(kind)
    storage, trial = study._storage, study.ask()
    calls: list[str] = []
    for name in ("set_trial_param", "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr"):
        real = getattr(storage, name)
        monkeypatch.setattr(storage, name, lambda *a, _n=name, _real=real: (calls.append(_n), _real(*a))[1])
    write_trial(storage, trial._trial_id, user_attrs=USER, system_attrs=SYSTEM, params=PARAMS,
                intermediate_values=STEPS)
    expected = ([["set_trial_param"] * len(PARAMS), ["set_trial_intermediate_value"] * len(STEPS),
                 ["set_trial_user_attr"] * len(USER), ["set_trial_system_attr"] * len(SYSTEM)])
    assert calls == [c for group in expected for c in group]
    stored = storage.get_trial(trial._trial_id)
    assert stored.user_attrs == USER and stored.params == {"n_conv": 4, "lr": 0.01}


def test_a_read_only_sqlite_file_still_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMSEARCH_SQLITE_WAL", "0")
    path = tmp_path / "done.db"
    gms.create_study(study_name="done", storage=f"sqlite:///{path}").optimize(lambda t: 1.0, n_trials=2)
    monkeypatch.setenv("GMSEARCH_SQLITE_WAL", "1")  # WAL cannot be switched on without write access
    storage = make_storage(f"sqlite:///file:{path}?mode=ro&uri=true", heartbeat_interval=None)
    study = optuna.load_study(study_name="done", storage=storage)
    assert [t.value for t in study.trials] == [1.0, 1.0]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _count_writes(storage: optuna.storages.BaseStorage, monkeypatch: pytest.MonkeyPatch) -> list[dict[int, float]]:
    """Every intermediate-value write that reaches ``storage``, batched or per step."""
    from gmsearch.search import writes

    seen: list[dict[int, float]] = []
    real = writes.write_trial
    batching = []

    def counted(storage: optuna.storages.BaseStorage, trial_id: int, **kwargs: object) -> None:
        if kwargs.get("intermediate_values"):
            seen.append(dict(kwargs["intermediate_values"]))  # type: ignore[call-overload]
        batching.append(True)
        try:
            real(storage, trial_id, **kwargs)  # type: ignore[arg-type]
        finally:
            batching.pop()

    monkeypatch.setattr(writes, "write_trial", counted)
    per_step = storage.set_trial_intermediate_value

    def one(trial_id: int, step: int, value: float) -> None:
        if not batching:  # the per-step calls of one write_trial count as one write
            seen.append({step: value})
        per_step(trial_id, step, value)

    monkeypatch.setattr(storage, "set_trial_intermediate_value", one)
    return seen


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_epoch_reports_without_a_pruner_are_written_together(kind: str, study_of, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from gmsearch.search import writes

    clock = _Clock()
    monkeypatch.setattr(writes.time, "monotonic", clock)
    study = study_of(kind)  # gmsearch's default pruner: NopPruner
    trial = study.ask()
    seen = _count_writes(study._storage, monkeypatch)
    reports = writes.EpochReports(trial, flush_seconds=5.0)
    assert reports.deferred
    for epoch in (1, 2, 3):
        clock.now += 1.0
        reports(epoch, epoch / 10)
    assert seen == [] and study._storage.get_trial(trial._trial_id).intermediate_values == {}
    clock.now += 2.5  # 5.5 s since the start: the curve so far reaches the storage (the dashboard stays live)
    reports(4, 0.4)
    assert seen == [{1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}]
    reports(5, 0.5)
    reports(5, 0.9)  # Optuna keeps the first value of a step
    assert reports.take() == {5: 0.5} and reports.take() == {}
    assert len(seen) == 1, "take() hands the rest to the trial's final write"


def test_epoch_reports_under_a_pruner_are_stored_and_checked_every_epoch(study_of, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from gmsearch.search import writes

    study = gms.create_study(storage=None, pruner=optuna.pruners.ThresholdPruner(lower=0.3))
    trial = study.ask()
    seen = _count_writes(study._storage, monkeypatch)
    reports = writes.EpochReports(trial)
    assert not reports.deferred
    reports(1, 0.5)
    assert seen == [{1: 0.5}], "a pruner decides on a stored value"
    with pytest.raises(optuna.TrialPruned, match="epoch 2"):
        reports(2, 0.2)
    assert study._storage.get_trial(trial._trial_id).intermediate_values == {1: 0.5, 2: 0.2}
    assert reports.take() == {}


def test_epoch_reports_of_a_multi_objective_study_are_dropped() -> None:
    from gmsearch.search import writes

    study = optuna.create_study(directions=["maximize", "maximize"])
    trial = study.ask()
    reports = writes.EpochReports(trial)
    reports(1, 0.5)
    assert reports.take() == {} and study._storage.get_trial(trial._trial_id).intermediate_values == {}
