"""Many worker processes on one study: nothing lost, duplicated or left RUNNING; a killed worker's trial is retried.

A cheap synthetic objective (fitness from the genome's spectrum and a short
sleep, no training) keeps these tests fast. Workers are forked (the parent
has already paid for importing torch; spawning four interpreters would cost
more than the tests themselves) and never share a database connection with
the parent: each opens its own storage. SQLite files live in /dev/shm when
it exists (no fsync), PostgreSQL is used too when GMSEARCH_TEST_POSTGRES_URL
is set (``.ci/run`` sets it).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import optuna
import pytest
from _worker_helpers import in_child, join_all, wait_for, work_until_finished
from optuna.trial import FrozenTrial, TrialState

import gmsearch as gms
from gmsearch.search.schema import GENOME_KEY, PARENT_KEY, REPLACED_KEY, SURPLUS_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)

pytestmark = pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork (Linux)")

S, N, D, G = 3, 2, 3.0, 2
PLANNED = gms.n_trials_for(G, S, N)  # 15
HEARTBEAT, GRACE = 1, 5  # seconds; a loaded 2-core CI box delays SQLite heartbeat writes by seconds
POSTGRES_URL = os.environ.get("GMSEARCH_TEST_POSTGRES_URL")


TIMEOUT = 90  # seconds all workers of a test may take together


def _sampler() -> gms.NicheEvolutionSampler:
    return gms.NicheEvolutionSampler(population_size=S, n_children=N, min_distance=D, generations=G, seed=3)


def _open(url: str, name: str) -> optuna.Study:
    return gms.create_study(
        study_name=name, storage=url, sampler=_sampler(), heartbeat_interval=HEARTBEAT, grace_period=GRACE
    )


def _work(url: str, name: str, seconds: float, child_seconds: float | None = None) -> None:
    work_until_finished(_open(url, name), seconds, child_seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "postgresql":
        if not POSTGRES_URL:
            pytest.skip("GMSEARCH_TEST_POSTGRES_URL is not set")
        yield POSTGRES_URL
        return
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="gmsearch-workers-", dir=shm if shm.is_dir() else None))
    try:
        yield f"sqlite:///{folder / 'study.db'}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start(
    url: str, seconds: list[float], child_seconds: float | None = None
) -> tuple[str, list[mp.process.BaseProcess]]:
    name = f"workers-{uuid.uuid4().hex[:8]}"
    creator = in_child(_open, url, name)  # the parent never holds a connection across fork
    creator.join(60)
    assert creator.exitcode == 0
    return name, [in_child(_work, url, name, s, child_seconds) for s in seconds]


def _check_finished_study(study: optuna.Study) -> list[FrozenTrial]:
    trials = study.get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    done = [t for t in trials if t.state == TrialState.COMPLETE and GENOME_KEY in t.system_attrs]
    initial = [t for t in done if t.user_attrs[PARENT_KEY] is None]
    children = [t for t in done if t.user_attrs[PARENT_KEY] is not None]
    assert (len(done), len(initial), len(children)) == (PLANNED, S, G * S * N)
    # nothing duplicated: no trial completed twice (a retry stands in for its failed original)
    origins = [t.system_attrs.get("failed_trial", t.number) for t in done]
    assert len(set(origins)) == PLANNED
    failed = {t.number for t in trials if t.state == TrialState.FAIL}
    assert {o for o in origins if o not in {t.number for t in done}} <= failed
    # every failed trial (here: failed by the heartbeat) was retried and its retry completed
    retried = {n for t in done for n in t.system_attrs.get("retry_history", [])}
    assert failed <= retried
    # roles decided as with one worker: initial candidates far apart, every child has an earlier parent
    for a in initial:
        for b in initial:
            if a.number < b.number:
                assert gms.spectrum_distance(gms.genome_of(a), gms.genome_of(b)) >= D
    by_number = {t.number: t for t in trials}
    for child in children:
        parent = by_number[child.user_attrs[PARENT_KEY]]
        assert GENOME_KEY in parent.system_attrs and parent.number < child.system_attrs.get(
            "failed_trial", child.number
        )
    # the only other trials: surplus ones started at the end, pruned without a genome
    extra = [t for t in trials if GENOME_KEY not in t.system_attrs]
    assert all(t.state == TrialState.PRUNED and t.system_attrs[SURPLUS_KEY] for t in extra)
    assert len(gms.population(study)) == S
    # the stored bookkeeping agrees with the replay every process rebuilds the population from, except
    # where another worker's trial finished in the instant between a child's bookkeeping and its completion
    replayed = {row["number"]: row["replaced"] for row in gms.lineage(study)}
    for child in children:
        if child.user_attrs.get(REPLACED_KEY) != replayed[child.number]:
            assert child.datetime_complete is not None
            assert any(
                t.datetime_complete is not None and t.number != child.number
                and timedelta(0) <= child.datetime_complete - t.datetime_complete < timedelta(seconds=0.5)
                for t in done
            ), f"child {child.number}: stored replaced differs from the replay without a concurrent completion"
    assert _sampler().is_finished(study)
    return trials


def test_four_workers_finish_every_trial_once(url: str) -> None:
    name, workers = _start(url, [0.1, 0.1, 0.1, 0.1])
    join_all(workers, TIMEOUT)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    trials = _check_finished_study(_open(url, name))
    assert len({t.user_attrs.get("pid") for t in trials if "pid" in t.user_attrs}) > 1, "work was shared"


def test_a_killed_worker_trial_is_failed_requeued_and_completed(url: str) -> None:
    # the victim runs the initial candidates quickly, then trains its first child "forever"
    name, (victim,) = _start(url, [0.05], child_seconds=60.0)
    watcher = _open(url, name)
    killed = wait_for(
        watcher, lambda t: t.state == TrialState.RUNNING and t.user_attrs.get("pid") == victim.pid
        and t.user_attrs.get(PARENT_KEY) is not None, "the victim's first child",
    )
    others = [in_child(_work, url, name, 0.2) for _ in range(3)]
    wait_for(watcher, lambda t: t.state == TrialState.COMPLETE and t.user_attrs.get("pid") != victim.pid,
             "a trial of the other workers")
    os.kill(victim.pid, signal.SIGKILL)  # mid-trial, while the others are busy
    join_all([victim, *others], TIMEOUT)
    assert victim.exitcode == -signal.SIGKILL
    assert [w.exitcode for w in others] == [0, 0, 0]
    trials = _check_finished_study(watcher)
    by_number = {t.number: t for t in trials}
    assert by_number[killed.number].state == TrialState.FAIL  # failed by heartbeat
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["pid"] != victim.pid
    assert retry.system_attrs[GENOME_KEY] == killed.system_attrs[GENOME_KEY]
    assert retry.user_attrs[PARENT_KEY] == killed.user_attrs[PARENT_KEY]


def test_gmsearch_run_with_two_spawned_workers(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`gmsearch run CONFIG --workers 2`: real (tiny) training in two spawned CPU workers."""
    import torch

    from gmsearch import cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cache = tmp_path_factory.getbasetemp() / "gmsearch-cache"  # shared with tests/test_export_refine.py
    config = tmp_path / "tiny.toml"
    config.write_text(f"""
seed = 0
device = "cpu"
[data]
name = "digits"
options = {{ image_size = 8 }}
[reference]
epochs = 2
[attack]
params = {{ eps = 0.2, alpha = 0.05, steps = 2 }}
[search]
population_size = 2
n_children = 1
generations = 1
epochs = 1
max_blocks = 8
[study]
name = "tiny"
storage = "sqlite:///{tmp_path / 'tiny.db'}"
artifacts = "{tmp_path / 'artifacts'}"
cache_dir = "{cache}"
""")
    try:
        assert cli.main(["run", str(config), "--workers", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "2 workers share SQLite storage" in caplog.text
    study = gms.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE and GENOME_KEY in t.system_attrs]
    assert len(done) == gms.n_trials_for(1, 2, 1) == 4
    assert not [t for t in study.get_trials() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert all("gmsearch:weights" in t.user_attrs for t in done)
    assert "study tiny:" in capsys.readouterr().out
    # the study records where its weights are: export finds them without --artifacts
    assert cli.main(["export", "--storage", f"sqlite:///{tmp_path / 'tiny.db'}", "--best",
                     "--out", str(tmp_path / "best")]) == 0
    assert (tmp_path / "best" / "weights.pt").is_file()


# --- where workers run: workers_per_device, devices, worker_count (no training, no processes) -----


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this machine has two CUDA GPUs."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def _placement(cfg_values: dict[str, object], workers: int | None = None) -> list[str]:
    from gmsearch import config, pipeline

    cfg = config.parse(cfg_values)
    return [pipeline.device_for(cfg, i) for i in range(pipeline.worker_count(cfg, workers))]


@pytest.mark.usefixtures("two_gpus")
def test_workers_per_device_places_k_workers_on_every_gpu() -> None:
    from gmsearch import config, pipeline

    cfg = config.parse({"workers_per_device": 3})
    assert pipeline.devices(cfg) == ["cuda:0", "cuda:1"]
    assert pipeline.worker_count(cfg) == 6
    assert _placement({"workers_per_device": 3}) == ["cuda:0", "cuda:1"] * 3
    assert pipeline.describe_workers(cfg) == "6 (3 per device on cuda:0, cuda:1)"
    assert pipeline.worker_count(cfg, 2) == 2, "an explicit worker count wins"
    assert pipeline.describe_workers(cfg, 2) == "2 (round-robin on cuda:0, cuda:1)"
    # an explicit GPU: every worker on it
    assert _placement({"device": "cuda:1", "workers_per_device": 3}) == ["cuda:1"] * 3
    assert _placement({"device": "cuda:1", "workers": 4}) == ["cuda:1"] * 4
    # "cuda" (and "auto") mean every GPU round-robin, not GPU 0 only
    assert _placement({"device": "cuda", "workers": 4}) == ["cuda:0", "cuda:1"] * 2
    assert _placement({"device": "auto", "workers": 3}) == ["cuda:0", "cuda:1", "cuda:0"]
    assert _placement({"device": "cuda"}) == ["cuda:0"]
    assert _placement({"device": "cpu", "workers_per_device": 2}) == ["cpu", "cpu"]


def test_workers_per_device_without_cuda_runs_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from gmsearch import config, pipeline
    from gmsearch.errors import EnvironmentProblem

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _placement({"workers_per_device": 2}) == ["cpu", "cpu"]
    assert pipeline.describe_workers(config.parse({"workers_per_device": 2})) == "2 (2 per device on cpu)"
    assert _placement({}) == ["cpu"]
    assert pipeline.describe_workers(config.parse({})) == "1 (this process)"
    # "cuda" stays "cuda" on a machine without a GPU, so the device check names the problem
    assert pipeline.devices(config.parse({"device": "cuda"})) == ["cuda"]
    with pytest.raises(EnvironmentProblem, match="no CUDA GPU"):
        pipeline.check_device(pipeline.device_for(config.parse({"device": "cuda"})))


@pytest.mark.usefixtures("two_gpus")
def test_run_spawns_workers_per_device_each_with_a_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """``runner.run`` starts worker_count processes; each takes cpu_count // workers torch threads, GPU ones too."""
    from gmsearch import config, runner

    started: list[tuple[object, ...]] = []
    plans: list[int | None] = []

    class FakeProcess:
        exitcode = 0

        def __init__(self, target: object, args: tuple[object, ...]) -> None:
            started.append(args)

        def start(self) -> None:
            pass

        def join(self) -> None:
            pass

    class Context:
        Process = FakeProcess

    def assemble(cfg: object, *, echo: object = None, workers: int | None = None, worker: int = 0) -> object:
        plans.append(workers)
        return type("Built", (), {"study": None})()

    monkeypatch.setattr(runner.pipeline, "check", lambda cfg: None)
    monkeypatch.setattr(runner.pipeline, "assemble", assemble)
    monkeypatch.setattr(runner.mp, "get_context", lambda method: Context())
    cfg = config.parse({"workers_per_device": 3, "study": {"storage": "postgresql://u:p@h/db"}})
    runner.run(cfg)
    assert [(a[1], a[2]) for a in started] == [(i, 6) for i in range(6)]
    assert plans == [None], "the plan says how the count came about (per device)"

    threads: list[int] = []
    monkeypatch.setattr(runner.torch, "set_num_threads", threads.append)
    monkeypatch.setattr(runner, "run_worker", lambda *a, **k: None)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 16)
    for worker in (0, 1):  # cuda:0 and cuda:1
        runner._spawned(started[worker][0], worker, 6)  # type: ignore[arg-type]
    assert threads == [2, 2]
