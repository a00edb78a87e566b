"""Every private Optuna name gmsearch uses (all in gmsearch/search/_optuna_private.py) still means what it did.

An Optuna release that renames or changes one fails here, with a message naming the installed Optuna,
before it can corrupt a stored study. Each check compares the private reach with what Optuna's
public API says (``get_study_id_from_name``, ``get_trial``, ``fail_stale_trials`` ...).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
import tomllib
from pathlib import Path

import optuna
import pytest
from optuna.storages import InMemoryStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState
from packaging.requirements import Requirement

from gmsearch.search import _optuna_private as private

ROOT = Path(__file__).resolve().parent.parent
VERSION = f"optuna {optuna.__version__}"

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")]


def test_the_installed_optuna_is_one_the_tests_ran_on() -> None:
    (dependency,) = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                     if Requirement(d).name == "optuna"]
    assert Requirement(dependency).specifier == Requirement(private.REQUIREMENT).specifier, \
        "pyproject.toml and _optuna_private.REQUIREMENT bound Optuna differently"
    assert Requirement(dependency).specifier.contains(optuna.__version__), (
        f"{VERSION} is outside {dependency}: run tests/test_optuna_private.py and the storage tests on it, "
        "then widen the bound (pyproject.toml, _optuna_private.REQUIREMENT and TESTED)"
    )
    assert optuna.__version__.rsplit(".", 1)[0] in private.TESTED, f"{VERSION} is not in TESTED ({private.TESTED})"


@pytest.mark.parametrize("kind", ["memory", "sqlite", "journal"])
def test_study_and_trial_ids_and_storage(kind: str, tmp_path: Path) -> None:
    url = {"memory": None, "sqlite": f"sqlite:///{tmp_path / 's.db'}", "journal": None}[kind]
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "s.log"))) if kind == "journal" else url
    optuna.create_study(study_name="other", storage=storage)  # ids differ from numbers
    study = optuna.create_study(study_name="ids", storage=storage)
    study.optimize(lambda t: 1.0, n_trials=2)
    running = study.ask()
    got = private.storage_of(study)
    assert isinstance(got, optuna.storages.BaseStorage), f"Study._storage changed in {VERSION}"
    assert private.study_id_of(study) == got.get_study_id_from_name("ids"), f"Study._study_id changed in {VERSION}"
    for trial in [*study.get_trials(deepcopy=False), running]:
        tid = private.trial_id_of(trial)
        assert got.get_trial(tid).number == trial.number, f"{type(trial).__name__}._trial_id changed in {VERSION}"
    assert got.get_trial_id_from_study_id_trial_number(private.study_id_of(study), 2) == private.trial_id_of(running)


def test_where_a_storage_keeps_its_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    cached = optuna.create_study(storage=url)
    backend = private.unwrap(private.storage_of(cached))
    assert isinstance(backend, RDBStorage) and backend.url == url, f"_CachedStorage._backend changed in {VERSION}"
    assert private.unwrap(private.with_optuna_cache(backend)) is backend, \
        f"optuna.storages.get_storage no longer wraps an RDB storage in its cache in {VERSION}"
    memory = InMemoryStorage()
    assert private.unwrap(memory) is memory and private.journal_file_of(memory) is None
    assert private.journal_file_of(private.storage_of(cached)) is None
    path = str(tmp_path / "j.log")
    journal = optuna.create_study(storage=JournalStorage(JournalFileBackend(path)))
    assert private.journal_file_of(private.storage_of(journal)) == path, \
        f"JournalStorage._backend / JournalFileBackend._file_path changed in {VERSION}"


class _Beats(private.Heartbeat, InMemoryStorage):
    def __init__(self) -> None:
        InMemoryStorage.__init__(self)
        self.beats: list[int] = []
        self.stale: set[int] = set()

    def record_heartbeat(self, trial_id: int) -> None:
        self.beats.append(trial_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        return [t for t in self.stale if self.get_trial(t).state == TrialState.RUNNING]

    def get_heartbeat_interval(self) -> int | None:
        return 7

    def get_heartbeat_stale_trial_callback(self) -> None:
        return None


def test_a_heartbeat_of_our_own_is_driven_by_optuna() -> None:
    storage = _Beats()
    study = optuna.create_study(storage=storage)
    assert private.is_heartbeat_enabled(storage) and private.heartbeat_interval(storage) == 7
    dead = study.ask()
    storage.stale.add(private.trial_id_of(dead))
    private.record_heartbeat(storage, private.trial_id_of(dead))
    assert storage.beats == [private.trial_id_of(dead)]
    optuna.storages.fail_stale_trials(study)  # public; asks _get_stale_trial_ids
    assert storage.get_trial(private.trial_id_of(dead)).state == TrialState.FAIL, \
        f"Optuna {optuna.__version__} no longer asks BaseHeartbeat._get_stale_trial_ids for stale trials"
    study.optimize(lambda t: 1.0, n_trials=1)  # study.optimize beats around the objective
    assert private.trial_id_of(study.trials[-1]) in storage.beats, \
        f"study.optimize of {VERSION} does not beat through BaseHeartbeat"


def test_optuna_s_own_heartbeat_is_seen(tmp_path: Path) -> None:
    beating = RDBStorage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=60)
    assert private.is_heartbeat_enabled(beating) and private.heartbeat_interval(beating) == 60
    study = optuna.create_study(storage=beating)
    private.record_heartbeat(beating, private.trial_id_of(study.ask()))
    quiet = RDBStorage(f"sqlite:///{tmp_path / 'q.db'}")
    assert not private.is_heartbeat_enabled(quiet) and private.heartbeat_interval(quiet) is None
    private.record_heartbeat(InMemoryStorage(), 0)  # no heartbeat: nothing happens


def test_failed_trials_are_logged_on_the_optimize_logger() -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record)
            return True

    logger, keep = logging.getLogger(private.OPTIMIZE_LOGGER), Keep()
    logger.addFilter(keep)
    try:
        optuna.create_study().optimize(lambda t: math.nan, n_trials=1)
    finally:
        logger.removeFilter(keep)
    assert any("failed" in r.getMessage() for r in seen), \
        f"{VERSION} no longer logs a failed trial on {private.OPTIMIZE_LOGGER!r}"


def test_a_changed_optuna_stops_with_one_line_naming_its_version(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(private.IncompatibleOptunaError, match=rf"Study\._storage.*optuna {optuna.__version__}"):
        private.storage_of(object())  # type: ignore[arg-type]
    with pytest.raises(private.IncompatibleOptunaError, match=r"_trial_id"):
        private.trial_id_of(object())  # type: ignore[arg-type]
    # an Optuna without the heartbeat module: importing gmsearch's private module says so
    monkeypatch.setitem(sys.modules, "optuna.storages._heartbeat", None)
    spec = importlib.util.spec_from_file_location("_optuna_private_copy", private.__file__)
    assert spec is not None and spec.loader is not None
    with pytest.raises(ImportError) as raised:  # the copy's own IncompatibleOptunaError
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    message = str(raised.value)
    assert "\n" not in message and f"optuna {optuna.__version__}" in message and private.REQUIREMENT in message
