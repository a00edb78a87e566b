"""NicheEvolutionSampler against an independent replay of Algorithm 1 (synthetic fitness, no training)."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

import gmsearch as gms
from gmsearch.config import SearchConfig
from gmsearch.search.census import PENDING_SECONDS, census_of
from gmsearch.search.sampler import SPECTRUM_PARAMS
from gmsearch.search.schema import GENOME_KEY, PARENT_KEY, REPLACED_KEY, SURPLUS_KEY, TOLD_FAIL_KEY, trial_seed

optuna.logging.set_verbosity(optuna.logging.WARNING)

S, N, D = 3, 2, 3.0


def synthetic_fitness(genome: gms.Genome) -> float:
    n_conv, n_pool, n_sconv, n_sum, n_concat = genome.spectrum()
    return -abs(n_conv - 6) - 0.5 * abs(n_sum - 2) + 0.25 * n_pool - 0.1 * n_sconv + 0.05 * n_concat


def objective(trial: optuna.Trial) -> float:
    return synthetic_fitness(gms.genome_of(trial))


def sampler(**kw: object) -> gms.NicheEvolutionSampler:
    args: dict[str, object] = {"population_size": S, "n_children": N, "min_distance": D, "seed": 7}
    args.update(kw)
    return gms.NicheEvolutionSampler(**args)  # type: ignore[arg-type]


def algorithm1(trials: list[optuna.trial.FrozenTrial], s: int, n: int) -> tuple[list[int], dict[int, int]]:
    """Independent, literal Algorithm 1 over the stored genomes: returns (population numbers, parent of each child)."""
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    genomes = {t.number: gms.genome_of(t) for t in complete}
    fit = {t.number: t.value for t in complete}
    pop = [t.number for t in complete[:s]]
    children = [t.number for t in complete[s:]]
    expected_parent: dict[int, int] = {}
    it = iter(children)
    done = False
    while not done:
        for i in range(s):  # for each N in P (P changes while we iterate)
            parent = pop[i]
            batch = []
            for _ in range(n):
                c = next(it, None)
                if c is None:
                    done = True
                    break
                batch.append(c)
                expected_parent[c] = parent
            for c in batch:  # train(C_j), compare with the closest candidate, replace if strictly better
                dists = [gms.spectrum_distance(genomes[c], genomes[p]) for p in pop]
                j = dists.index(min(dists))
                if fit[pop[j]] < fit[c]:  # type: ignore[operator]
                    pop[j] = c
            if done:
                break
    return pop, expected_parent


def run(storage: object = None, n_trials: int = S + 3 * S * N, **kw: object) -> optuna.Study:
    study = gms.create_study(study_name="t", storage=storage, sampler=sampler(**kw))  # type: ignore[arg-type]
    study.optimize(objective, n_trials=n_trials)
    return study


def test_population_equals_literal_algorithm1() -> None:
    study = run()
    trials = study.get_trials()
    pop, expected_parent = algorithm1(trials, S, N)
    assert [t.number for t in gms.population(study)] == pop
    for t in trials[S:]:
        assert t.user_attrs[PARENT_KEY] == expected_parent[t.number]
    # evolution happened: some child replaced a candidate, and fitness never got worse per slot
    assert any(t.user_attrs.get(REPLACED_KEY) is not None for t in trials)
    initial_best = max(t.value for t in trials[:S])  # type: ignore[type-var]
    assert max(t.value for t in gms.population(study)) >= initial_best  # type: ignore[type-var]


def test_initial_candidates_are_far_apart_and_children_name_parents() -> None:
    study = run()
    trials = study.get_trials()
    initial = [t for t in trials if t.user_attrs[PARENT_KEY] is None]
    assert len(initial) == S
    for a in initial:
        for b in initial:
            if a.number < b.number:
                assert gms.spectrum_distance(gms.genome_of(a), gms.genome_of(b)) >= D
    for t in trials[S:]:
        parent = t.user_attrs[PARENT_KEY]
        assert isinstance(parent, int) and parent < t.number
        assert t.user_attrs["gmsearch:generation"] == (t.number - S) // (S * N) + 1
        assert [t.params[p] for p in SPECTRUM_PARAMS] == list(gms.genome_of(t).spectrum())
    # the turn's children share their parent
    for k in range(0, len(trials) - S, N):
        parents = {t.user_attrs[PARENT_KEY] for t in trials[S + k : S + k + N]}
        assert len(parents) == 1
    # mutation really changes genomes
    changed = sum(gms.genome_of(t) != gms.genome_of(trials[t.user_attrs[PARENT_KEY]]) for t in trials[S:])
    assert changed >= len(trials[S:]) - 2


def _signature(study: optuna.Study) -> list[tuple[int, str, object, float | None]]:
    return [
        (t.number, t.system_attrs[GENOME_KEY], t.user_attrs[PARENT_KEY], t.value) for t in study.get_trials()
    ]


def test_identical_across_memory_sqlite_and_journal(tmp_path: Path) -> None:
    mem = run(None)
    sql = run(f"sqlite:///{tmp_path / 's.db'}")
    jou = run(f"journal:{tmp_path / 'j.log'}")
    assert _signature(mem) == _signature(sql) == _signature(jou)
    assert [t.number for t in gms.population(mem)] == [t.number for t in gms.population(sql)]
    assert [t.number for t in gms.population(mem)] == [t.number for t in gms.population(jou)]


def test_restart_resumes_with_the_same_population(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    run(url, n_trials=8)
    # a new process: new sampler object, same seed, same storage
    resumed = run(url, n_trials=S + 3 * S * N - 8)
    straight = run(None)
    assert _signature(resumed) == _signature(straight)
    assert [t.number for t in gms.population(resumed)] == [t.number for t in gms.population(straight)]


def test_seed_changes_genomes() -> None:
    assert _signature(run(None, seed=1)) != _signature(run(None, seed=2))


def test_failed_trials_never_enter_and_are_not_counted() -> None:
    calls = {"n": 0}

    def flaky(trial: optuna.Trial) -> float:
        calls["n"] += 1
        if calls["n"] in (2, 6):
            return math.nan  # Optuna marks the trial FAIL, the study goes on
        return objective(trial)

    study = gms.create_study(study_name="f", storage=None, sampler=sampler())
    study.optimize(flaky, n_trials=S + 2 * S * N + 2)
    trials = study.get_trials()
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    assert failed == [1, 5]
    pop = {t.number for t in gms.population(study)}
    assert not pop & set(failed)
    assert len([t for t in trials if t.user_attrs[PARENT_KEY] is None and t.state != TrialState.FAIL]) == S
    ok = [t for t in trials if t.state == TrialState.COMPLETE]
    _, expected_parent = algorithm1(ok, S, N)
    for t in ok[S:]:
        assert t.user_attrs[PARENT_KEY] == expected_parent[t.number]


def test_requeued_trial_keeps_its_genome_and_parent(tmp_path: Path) -> None:
    study = gms.create_study(study_name="q", storage=f"sqlite:///{tmp_path / 'q.db'}", sampler=sampler())
    study.optimize(objective, n_trials=S + 1)
    victim = study.get_trials()[-1]
    # what the heartbeat does to a dead worker's trial: FAIL it and re-queue with its attrs
    trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)
    study.tell(trial, state=TrialState.FAIL)
    RetryHeartbeatStaleTrialCallback()(study, study._storage.get_trial(frozen._trial_id))
    study.optimize(objective, n_trials=1)
    retried = study.get_trials()[-1]
    assert retried.state == TrialState.COMPLETE
    assert retried.system_attrs[GENOME_KEY] == frozen.system_attrs[GENOME_KEY]
    assert retried.user_attrs[PARENT_KEY] == frozen.user_attrs[PARENT_KEY]
    assert victim.state == TrialState.COMPLETE


def test_generations_stop_the_study() -> None:
    study = gms.create_study(study_name="g", storage=None, sampler=sampler(generations=2))
    study.optimize(objective, n_trials=1000)
    assert len(study.trials) == gms.n_trials_for(2, S, N) == S + 2 * S * N


def test_epoch_schedule_is_told_through_the_trial() -> None:
    seen: dict[int, tuple[object, object]] = {}

    def reads_its_trial(trial: optuna.Trial) -> float:
        # what a running objective sees (Trial.user_attrs is a snapshot taken before before_trial)
        seen[trial.number] = (trial.user_attrs.get("gmsearch:epochs"), trial.user_attrs.get(PARENT_KEY))
        assert [trial.params[p] for p in SPECTRUM_PARAMS] == list(gms.genome_of(trial).spectrum())
        return objective(trial)

    study = gms.create_study(
        study_name="e", storage=None, sampler=sampler(epoch_schedule=gms.EpochSchedule(base=20, step=5, every=2))
    )
    study.optimize(reads_its_trial, n_trials=S + 3 * S * N)
    by_gen = {t.user_attrs["gmsearch:generation"]: t.user_attrs["gmsearch:epochs"] for t in study.trials}
    assert by_gen == {0: 20, 1: 20, 2: 20, 3: 25}
    assert seen == {t.number: (t.user_attrs["gmsearch:epochs"], t.user_attrs[PARENT_KEY]) for t in study.trials}


def test_epoch_schedule_is_the_papers() -> None:
    paper = gms.EpochSchedule()  # 20 epochs, +5 every 10 generations
    assert [paper.epochs(g) for g in (0, 1, 10, 11, 20, 21, 41, 50)] == [20, 20, 20, 25, 25, 30, 40, 40]


def test_two_objectives_replace_on_dominance() -> None:
    def two(trial: optuna.Trial) -> tuple[float, float]:
        sp = gms.genome_of(trial).spectrum()
        return float(sp[0]), float(-abs(sp[3] - 2))

    study = gms.create_study(study_name="p", storage=None, sampler=sampler(), directions=["maximize"] * 2)
    study.optimize(two, n_trials=S + 2 * S * N)
    for t in study.trials:
        r = t.user_attrs.get(REPLACED_KEY)
        if r is not None:
            old = study.trials[r].values
            assert all(a >= b for a, b in zip(t.values, old, strict=True)) and t.values != old


def test_plain_optuna_create_study_works() -> None:
    study = optuna.create_study(direction="maximize", sampler=sampler())
    study.optimize(objective, n_trials=S + S * N)
    assert len(gms.population(study)) == S
    rows = gms.lineage(study)
    assert len(rows) == S + S * N and rows[-1]["parent"] is not None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"population_size": 0}, "population_size"),
        ({"n_children": 0}, "n_children"),
        ({"min_distance": -1.0}, "min_distance"),
        ({"mutations_per_child": (5, 4)}, "mutations_per_child"),
        ({"mutation_names": ["no_such_op"]}, "available"),
    ],
)
def test_bad_settings_are_rejected(kw: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, KeyError), match=match):
        sampler(**kw)


def test_unreachable_min_distance_is_a_clear_error() -> None:
    study = gms.create_study(study_name="d", storage=None, sampler=sampler(min_distance=1000.0))
    with pytest.raises(ValueError, match="distance"):
        study.optimize(objective, n_trials=2)


def test_threads_finish_exactly_the_planned_generations() -> None:
    study = gms.create_study(study_name="j", storage=None, sampler=sampler(generations=2))
    study.optimize(objective, n_trials=1000, n_jobs=4)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE and GENOME_KEY in t.system_attrs]
    assert len(done) == gms.n_trials_for(2, S, N)
    assert len([t for t in done if t.user_attrs[PARENT_KEY] is None]) == S
    surplus = [t for t in study.trials if GENOME_KEY not in t.system_attrs]
    assert all(t.state == TrialState.PRUNED and t.system_attrs[SURPLUS_KEY] for t in surplus)
    assert len(surplus) <= 4


def test_ask_and_tell_past_the_last_generation() -> None:
    study = gms.create_study(study_name="a", storage=None, sampler=sampler(generations=1))
    for _ in range(gms.n_trials_for(1, S, N)):
        trial = study.ask()
        study.tell(trial, objective(trial))  # the last tell does not raise (no optimize loop to stop)
    extra = study.ask()
    with pytest.raises(optuna.TrialPruned, match="surplus"):
        gms.genome_of(extra)
    study.tell(extra, state=TrialState.PRUNED)
    assert gms.NicheEvolutionSampler(population_size=S, n_children=N, generations=1).is_finished(study)


def _frozen(number: int, state: TrialState = TrialState.RUNNING, *, parent: int | None = None,
            genome: bool = True, surplus: bool = False, age: float = 0.0,
            system: dict[str, object] | None = None) -> optuna.trial.FrozenTrial:
    now = datetime.now()
    attrs: dict[str, object] = dict(system or {})
    if genome:
        attrs[GENOME_KEY] = "{}"
    if surplus:
        attrs[SURPLUS_KEY] = True
    return optuna.trial.FrozenTrial(
        number=number, state=state, value=1.0 if state == TrialState.COMPLETE else None,
        datetime_start=now - timedelta(seconds=age),
        datetime_complete=now - timedelta(seconds=age) if state.is_finished() else None,
        params={}, distributions={}, user_attrs={PARENT_KEY: parent} if genome else {},
        system_attrs=attrs, intermediate_values={}, trial_id=number, values=None,
    )


def test_census_counts_trials_other_workers_are_still_sampling() -> None:
    now = datetime.now()
    # 0 and 1 initial; 2 being sampled right now (predicted initial, s=3); 3 a child; 4 being sampled (a child)
    trials = [_frozen(0), _frozen(1), _frozen(2, genome=False), _frozen(3, parent=0), _frozen(4, genome=False)]
    census = census_of(trials, 5, 3, now)
    assert census.n_initial == 3 and [t.number for t in census.earlier_children] == [3, 4] and census.settling
    # a trial without genome left by a worker that died long ago counts for nothing
    old = [_frozen(0), _frozen(1), _frozen(2, genome=False, age=PENDING_SECONDS + 1)]
    assert census_of(old, 3, 3, now).n_initial == 2
    # trial 2 (lower number) decides before trial 1 wrote its genome: 1 is predicted initial
    assert census_of([_frozen(0), _frozen(1, genome=False)], 2, 2, now).n_initial == 2
    # later-numbered re-queued children and earlier waiting surplus trials hold places too
    trials = [_frozen(0), _frozen(1), _frozen(2, parent=0), _frozen(3, genome=False, surplus=True),
              _frozen(9, TrialState.WAITING, parent=1)]
    census = census_of(trials, 5, 2, now)
    assert [t.number for t in census.earlier_children] == [2] and census.n_children == 3
    # a trial just failed by the heartbeat keeps its place until its re-queued copy exists
    failed = _frozen(2, TrialState.FAIL, parent=0)
    assert census_of([_frozen(0), _frozen(1), failed], 5, 2, now).n_children == 1
    requeued = _frozen(3, TrialState.WAITING, parent=0, system={"failed_trial": 2, "retry_history": [2]})
    assert census_of([_frozen(0), _frozen(1), failed, requeued], 5, 2, now).n_children == 1
    told = _frozen(2, TrialState.FAIL, parent=0, system={TOLD_FAIL_KEY: True})  # failed by its worker
    assert census_of([_frozen(0), _frozen(1), told], 5, 2, now).n_children == 0


def test_a_worker_with_other_mutation_operators_warns(caplog: pytest.LogCaptureFixture) -> None:
    study = gms.create_study(study_name="ops", storage=None, sampler=sampler())
    study.optimize(objective, n_trials=1)
    stored = study._storage.get_study_system_attrs(study._study_id)["gmsearch:sampler"]
    assert stored["mutations"] == sorted(gms.mutations.names()) and stored["budget"]["max_blocks"] > 0

    @gms.mutations.register("noop_for_test")
    def noop(genome: gms.Genome, rng: random.Random) -> gms.Genome:
        return genome

    try:
        other = gms.create_study(study_name="ops", storage=study._storage, sampler=sampler())
        with caplog.at_level("WARNING"):
            other.optimize(objective, n_trials=1)
        assert "other sampler settings (mutations)" in caplog.text
    finally:
        gms.mutations.registry.unregister("noop_for_test")


def test_two_threads_draw_what_one_worker_draws() -> None:
    """Optuna reseeds the sampler in each thread of ``n_jobs > 1``: every draw still derives from (seed, trial)."""

    def with_lr(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)  # an independent param, drawn by the sampler
        return objective(trial)

    studies = []
    for n_jobs in (1, 2):
        study = gms.create_study(study_name=f"jobs{n_jobs}", storage=None, sampler=sampler(generations=2))
        study.optimize(with_lr, n_trials=100, n_jobs=n_jobs)
        studies.append({t.number: t for t in study.trials if GENOME_KEY in t.system_attrs})
    serial, threaded = studies
    assert len(threaded) == len(serial) == gms.n_trials_for(2, S, N)
    assert {n: t.params["lr"] for n, t in threaded.items()} == {n: t.params["lr"] for n, t in serial.items()}
    initial = [n for n, t in serial.items() if t.user_attrs[PARENT_KEY] is None]
    assert all(threaded[n].system_attrs[GENOME_KEY] == serial[n].system_attrs[GENOME_KEY] for n in initial)
    toolbox = gms.mutations.toolbox(k=(4, 5))
    for number, child in threaded.items():  # a child: its parent's genome mutated by the trial's own rng
        parent = child.user_attrs[PARENT_KEY]
        if parent is not None:
            rng = random.Random(trial_seed(7, number))
            assert toolbox.aggressive(gms.genome_of(threaded[parent]), rng) == gms.genome_of(child)


def test_the_default_epoch_schedule_is_the_papers_as_in_the_config() -> None:
    search = SearchConfig()
    configured = gms.EpochSchedule(base=search.epochs, step=search.epochs_step, every=search.epochs_every)
    assert gms.NicheEvolutionSampler().epoch_schedule == gms.EpochSchedule() == configured
    study = gms.create_study(study_name="default", storage=None, sampler=gms.NicheEvolutionSampler(
        population_size=S, n_children=N, min_distance=D, seed=7))
    study.optimize(objective, n_trials=S + S * N)
    assert {t.user_attrs["gmsearch:epochs"] for t in study.trials} == {search.epochs}
    quiet = gms.create_study(study_name="none", storage=None, sampler=sampler(epoch_schedule=None))
    quiet.optimize(objective, n_trials=2)  # None: the objective decides
    assert not [t for t in quiet.trials if "gmsearch:epochs" in t.user_attrs]
