"""Ctrl-C: `gmsearch run` stops at a safe point, says so in one line, exits 130, leaves no trial RUNNING and
re-queues the interrupted child with its genome and parent; two processes on one SQLite study warn."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

import gmsearch as gms
from gmsearch import interrupt, runner
from gmsearch.errors import Interrupted
from gmsearch.search import prior
from gmsearch.search.samplers import _base as sampler_module
from gmsearch.search.schema import FAIL_REASON_KEY, GENOME_KEY, INTERRUPTED, PARENT_KEY, TOLD_FAIL_KEY

CONFIG = """
seed = 0
device = "cpu"
[data]
name = "digits"
image_size = 8
[reference]
epochs = 2
[attack]
params = {{ steps = 2 }}
[search]
population_size = 2
n_children = 1
generations = 2
epochs = 400
[study]
name = "ctrl-c"
storage = "sqlite:///{tmp}/study.db"
artifacts = "{tmp}/artifacts"
cache_dir = "{tmp}/cache"
"""


def _study_exists(path: Path, name: str) -> bool:
    """Whether the SQLite file holds study ``name`` (read-only: creates nothing, takes no write lock)."""
    if not path.exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)) as db:
            return db.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone() is not None
    except sqlite3.Error:
        return False  # no schema yet, or locked for a moment


def _running_child(storage: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if not _study_exists(Path(storage[len("sqlite:///") :]), "ctrl-c"):
            continue  # opening the storage while the run creates its schema races it (alembic_version's insert)
        try:
            study = optuna.load_study(study_name="ctrl-c", storage=storage)
        except (KeyError, optuna.exceptions.StorageInternalError):
            continue
        if any(GENOME_KEY in t.system_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
            return
    raise AssertionError("no trial started training in time")


def test_ctrl_c_stops_at_a_safe_point_and_requeues_the_child(tmp_path: Path) -> None:
    config = tmp_path / "study.toml"
    config.write_text(CONFIG.format(tmp=tmp_path))
    storage = f"sqlite:///{tmp_path}/study.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gmsearch.cli", "run", str(config), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        _running_child(storage, time.monotonic() + 240)
        time.sleep(1.0)  # well inside the child's 400 epochs
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert seconds < 15, f"took {seconds:.1f} s to stop"
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["gmsearch: interrupted; run the same command again to resume"], err
    assert "Traceback" not in err and "plan:" in out
    study = optuna.load_study(study_name="ctrl-c", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    (stopped,) = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped.user_attrs[FAIL_REASON_KEY] == INTERRUPTED
    (again,) = [t for t in trials if t.state == TrialState.WAITING]
    assert again.system_attrs[GENOME_KEY] == stopped.system_attrs[GENOME_KEY]
    assert again.user_attrs[PARENT_KEY] == stopped.user_attrs[PARENT_KEY]


def test_two_processes_on_one_sqlite_study_warn(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/s.db"
    study = gms.create_study(study_name="shared", storage=storage, sampler=gms.NicheEvolutionSampler(seed=0))
    assert runner.other_process_warning(study, storage) is None
    study.ask()  # another process's running trial (its heartbeat is fresh)
    warning = runner.other_process_warning(study, storage)
    assert warning is not None and "another process is working on study 'shared'" in warning


@pytest.mark.parametrize("reason", ["diverged: nan", "out of memory"])
def test_a_run_where_every_trial_failed_names_the_reason(reason: str) -> None:
    study = optuna.create_study()
    for _ in range(3):
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.FAIL, system_attrs={GENOME_KEY: "{}"}, user_attrs={FAIL_REASON_KEY: reason}
        ))
    assert runner.failure_summary(study) == f"every trial failed (3); the most common reason (3x): {reason}"


def _interrupted_on(numbers: set[int]) -> Callable[[optuna.Trial], float]:
    """A fake objective: Ctrl-C (as GMObjective records it) while training the trials ``numbers``."""

    def objective(trial: optuna.Trial) -> float:
        if trial.number in numbers:
            trial.set_user_attr(FAIL_REASON_KEY, INTERRUPTED)
            trial.set_user_attr("params", 123)  # what the run had measured when it stopped
            raise KeyboardInterrupt
        return float(sum(gms.genome_of(trial).spectrum()))

    return objective


def test_a_completed_retry_reads_as_completed_and_retry_histories_stay() -> None:
    sampler = gms.NicheEvolutionSampler(population_size=2, n_children=1, min_distance=2.0, generations=2, seed=0)
    study = gms.create_study(study_name="retry", storage=None, sampler=sampler)
    objective = _interrupted_on({3, 4})  # child 3 stopped, then its retry 4 stopped too
    for _ in range(2):
        with pytest.raises(Interrupted):
            runner.optimize_until_finished(study, objective)
    assert runner.optimize_until_finished(study, objective)
    trials = study.get_trials(deepcopy=False)
    third, fourth, fifth = trials[3], trials[4], trials[5]
    assert [t.state for t in (third, fourth, fifth)] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert third.system_attrs[TOLD_FAIL_KEY] and fourth.system_attrs[TOLD_FAIL_KEY]
    assert fourth.system_attrs["retry_history"] == [3]  # unchanged when 4 was re-queued in turn
    assert fifth.system_attrs["retry_history"] == [3, 4] and fifth.system_attrs["failed_trial"] == 3
    assert TOLD_FAIL_KEY not in fifth.system_attrs
    assert FAIL_REASON_KEY not in fifth.user_attrs and "params" not in fifth.user_attrs
    assert fifth.system_attrs[GENOME_KEY] == third.system_attrs[GENOME_KEY]
    assert fifth.user_attrs[PARENT_KEY] == third.user_attrs[PARENT_KEY]


def test_ctrl_c_stops_a_surplus_trial_waiting_for_other_workers(tmp_path: Path) -> None:
    sampler = gms.NicheEvolutionSampler(population_size=1, n_children=1, generations=1, seed=0)
    study = gms.create_study(study_name="wait", storage=f"sqlite:///{tmp_path}/s.db", sampler=sampler)
    study.tell(study.ask(), 1.0)
    training = study.ask()  # the last planned child, trained by "another worker" (fresh heartbeat)
    safety = threading.Timer(4.0, lambda: study.tell(training, 1.0))  # before the fix: the wait ends here
    safety.start()
    try:
        with interrupt.stop_on_sigint():
            interrupt.request()  # the first Ctrl-C
            started = time.monotonic()
            with pytest.raises(Interrupted):
                study.ask()  # surplus: waits while the child trains, unless it sees the Ctrl-C
            seconds = time.monotonic() - started
    finally:
        safety.cancel()
    assert seconds < 2.0
    waited = study.get_trials(deepcopy=False)[-1]
    assert waited.number == 2 and waited.state == TrialState.FAIL and GENOME_KEY not in waited.system_attrs
    assert waited.user_attrs[FAIL_REASON_KEY] == INTERRUPTED


def test_a_second_ctrl_c_inside_ask_leaves_no_running_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = gms.NicheEvolutionSampler(population_size=2, n_children=1, min_distance=2.0, generations=1, seed=0)
    study = gms.create_study(study_name="ask", storage=None, sampler=sampler)

    def ctrl_c(*args: object, **kwargs: object) -> gms.Genome:
        raise KeyboardInterrupt  # lands while the genome is being made

    with monkeypatch.context() as patch:
        patch.setattr(prior, "random_genome_far_from", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            study.optimize(_interrupted_on(set()), n_trials=1)
    (first,) = study.get_trials(deepcopy=False)
    assert first.state == TrialState.FAIL and GENOME_KEY not in first.system_attrs

    real_write = sampler_module.write_trial

    def ctrl_c_after_the_genome(storage: object, trial_id: int, **kw: Any) -> None:
        real_write(storage, trial_id, **kw)  # type: ignore[arg-type]
        if GENOME_KEY in (kw.get("system_attrs") or {}):
            raise KeyboardInterrupt  # lands just after the genome was stored

    with monkeypatch.context() as patch:
        patch.setattr(sampler_module, "write_trial", ctrl_c_after_the_genome)
        with pytest.raises(Interrupted):
            runner.optimize_until_finished(study, _interrupted_on(set()))
    second = study.get_trials(deepcopy=False)[1]
    assert second.state == TrialState.FAIL and GENOME_KEY in second.system_attrs
    assert runner.optimize_until_finished(study, _interrupted_on(set()))  # its re-queued copy trains
    trials = study.get_trials(deepcopy=False)
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert retry.state == TrialState.COMPLETE and retry.system_attrs[GENOME_KEY] == second.system_attrs[GENOME_KEY]


def test_the_run_summary_counts_an_interrupted_trial_beside_its_retry() -> None:
    sampler = gms.NicheEvolutionSampler(population_size=2, n_children=1, min_distance=2.0, generations=2, seed=0)
    study = gms.create_study(study_name="summary", storage=None, sampler=sampler)
    with pytest.raises(Interrupted):
        runner.optimize_until_finished(study, _interrupted_on({3}))
    assert runner.trial_summary(study) == "5 trials: 3 complete, 1 interrupted (1 retried), 1 waiting"
    assert runner.optimize_until_finished(study, _interrupted_on(set()))
    assert runner.trial_summary(study) == "7 trials: 6 complete, 1 interrupted (1 retried)"
