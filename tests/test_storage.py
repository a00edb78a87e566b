"""Storages: identical results on in-memory, SQLite, journal and PostgreSQL; heartbeat on RDB; shared-SQLite warning.

PostgreSQL runs when GMSEARCH_TEST_POSTGRES_URL is set (``.ci/run`` starts a
throwaway server and sets it), e.g.
``postgresql+psycopg://gmsearch:gmsearch@127.0.0.1:5432/gmsearch``.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import InMemoryStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages.journal import JournalStorage
from optuna.trial import TrialState

import gmsearch as gms
from gmsearch import config, runner
from gmsearch.search.schema import GENERATION_KEY, GENOME_KEY, PARENT_KEY, REPLACED_KEY
from gmsearch.search.study import make_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

POSTGRES_URL = os.environ.get("GMSEARCH_TEST_POSTGRES_URL")
S, N, G = 2, 2, 2


def _url(kind: str, tmp_path: Path) -> str | None:
    if kind == "memory":
        return None
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    if kind == "journal":
        return f"journal:{tmp_path / 'study.log'}"
    if not POSTGRES_URL:
        pytest.skip("GMSEARCH_TEST_POSTGRES_URL is not set")
    return POSTGRES_URL


def _objective(trial: optuna.Trial) -> float:
    if trial.number == 3:
        return math.nan  # a failed child: the study goes on, nothing stored is corrupted
    n_conv, n_pool, n_sconv, n_sum, n_concat = gms.genome_of(trial).spectrum()
    return -abs(n_conv - 5) + 0.3 * n_pool - 0.2 * n_sconv + 0.1 * n_sum + 0.05 * n_concat


def _run(url: str | None, name: str) -> optuna.Study:
    sampler = gms.NicheEvolutionSampler(population_size=S, n_children=N, min_distance=2.0, generations=G, seed=11)
    study = gms.create_study(study_name=name, storage=url, sampler=sampler)
    study.optimize(_objective, n_trials=100)  # the sampler stops it after G generations
    return study


def _signature(study: optuna.Study) -> list[tuple[Any, ...]]:
    return [
        (t.number, t.state.name, t.system_attrs.get(GENOME_KEY), t.user_attrs.get(PARENT_KEY),
         t.user_attrs.get(GENERATION_KEY), t.user_attrs.get(REPLACED_KEY), t.values, t.params)
        for t in study.get_trials()
    ]


@pytest.fixture(scope="module")
def in_memory() -> optuna.Study:
    return _run(None, "reference")


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_results_identical_to_in_memory(kind: str, in_memory: optuna.Study, tmp_path: Path) -> None:
    name = f"same-{uuid.uuid4().hex[:8]}"
    study = _run(_url(kind, tmp_path), name)
    assert _signature(study) == _signature(in_memory)
    assert [t.number for t in gms.population(study)] == [t.number for t in gms.population(in_memory)]
    assert gms.lineage(study) == gms.lineage(in_memory)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == gms.n_trials_for(G, S, N)
    # reopened as another process would (a fresh storage object): the same study
    reopened = gms.load_study(study_name=name, storage=_url(kind, tmp_path))  # type: ignore[arg-type]
    assert _signature(reopened) == _signature(study)
    assert [t.number for t in gms.population(reopened)] == [t.number for t in gms.population(study)]
    if kind == "postgresql":
        optuna.delete_study(study_name=name, storage=POSTGRES_URL)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_create_study_on_rdb_turns_on_heartbeat_and_retry(kind: str, tmp_path: Path) -> None:
    url = _url(kind, tmp_path)
    name = f"hb-{uuid.uuid4().hex[:8]}"
    study = gms.create_study(study_name=name, storage=url)
    assert is_heartbeat_enabled(study._storage)
    storage = getattr(study._storage, "_backend", study._storage)  # Optuna wraps RDB storages in a cache
    assert isinstance(storage, RDBStorage)
    assert storage.heartbeat_interval == 60
    callback = storage.get_heartbeat_stale_trial_callback()
    assert isinstance(callback, RetryHeartbeatStaleTrialCallback) and callback._max_retry == 3
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    quiet = gms.create_study(study_name=name, storage=url, heartbeat_interval=None)  # resumed, no heartbeat
    assert not is_heartbeat_enabled(quiet._storage)
    if kind == "postgresql":  # a plain postgresql:// URL works with psycopg 3 alone
        assert url is not None
        plain = gms.load_study(study_name=name, storage=url.replace("postgresql+psycopg://", "postgresql://"))
        assert plain.study_name == name
    if kind == "postgresql":
        optuna.delete_study(study_name=name, storage=POSTGRES_URL)


def test_other_storages_have_no_heartbeat(tmp_path: Path) -> None:
    assert make_storage(None) is None
    assert isinstance(gms.create_study(storage=None)._storage, InMemoryStorage)
    journal = make_storage(f"journal:{tmp_path / 'j.log'}")
    assert isinstance(journal, JournalStorage) and not is_heartbeat_enabled(journal)
    with pytest.raises(ValueError, match="not a database URL"):
        make_storage("gmsearch.db")


def test_workers_sharing_sqlite_are_warned(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert runner.shared_storage_warning("sqlite:///s.db", 1) is None
    assert "PostgreSQL" in (runner.shared_storage_warning("sqlite:///s.db", 4) or "")
    assert "no heartbeat" in (runner.shared_storage_warning("journal:s.log", 2) or "")
    assert runner.shared_storage_warning("postgresql+psycopg://u:p@h/db", 8) is None

    class Stop(Exception):
        pass

    def build(*args: object, **kwargs: object) -> None:
        raise Stop  # the warning comes before any work

    monkeypatch.setattr(runner.pipeline, "assemble", build)
    cfg = config.parse({"workers": 3, "study": {"storage": "sqlite:///shared.db"}})
    with caplog.at_level(logging.WARNING, logger="gmsearch.runner"), pytest.raises(Stop):
        runner.run(cfg)
    assert "3 workers share SQLite storage sqlite:///shared.db" in caplog.text
    with pytest.raises(ValueError, match="workers"):
        runner.run(cfg, workers=0)
