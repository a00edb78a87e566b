"""Sampler plugins (ways of spending the budget) on a cheap spectrum fitness: no training."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import random
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from _worker_helpers import in_child, join_all, spectrum_fitness, work_until_finished
from optuna.trial import FrozenTrial, TrialState

import gmsearch as gms
from gmsearch import pipeline, runner
from gmsearch.config import parse
from gmsearch.errors import UsageError
from gmsearch.plugins import table
from gmsearch.search import mutations, prior, samplers
from gmsearch.search._optuna_private import storage_of, study_id_of
from gmsearch.search.samplers._base import niche_generation
from gmsearch.search.samplers.regularized import aging_population, tournament
from gmsearch.search.schema import EPOCHS_KEY, GENERATION_KEY, GENOME_KEY, PARENT_KEY, SAMPLER_KEY, trial_seed

optuna.logging.set_verbosity(optuna.logging.WARNING)

S, N, G, SEED = 3, 2, 2, 5
PLANNED = gms.n_trials_for(G, S, N)  # 15
WAYS = ["niche", "random", "regularized", "restarts"]
SCHEDULE = gms.EpochSchedule(base=1, step=1, every=1)  # the generation shows in the epochs


def make(name: str, **kw: object) -> samplers.GenomeSampler:
    args: dict[str, object] = {
        "population_size": S, "n_children": N, "min_distance": 2.0, "generations": G, "seed": SEED,
        "epoch_schedule": SCHEDULE, "budget": mutations.SizeBudget(max_blocks=6),
    }
    args.update(kw)
    return samplers.create(name, **args)


def objective(trial: optuna.Trial) -> float:
    return spectrum_fitness(gms.genome_of(trial))


def done(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials() if t.state == TrialState.COMPLETE and GENOME_KEY in t.system_attrs]


def check_complete(study: optuna.Study, name: str) -> list[FrozenTrial]:
    trials = study.get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    finished = done(study)
    assert len(finished) == PLANNED
    n_children = len([t for t in finished if t.user_attrs[PARENT_KEY] is not None])
    assert n_children == (G * S * N if name in ("niche", "regularized") else 0)
    # every way trains trial i for the epochs Algorithm 1's trial i trains: the same child-epochs
    epochs = sorted(t.user_attrs[EPOCHS_KEY] for t in finished)
    assert epochs == sorted(SCHEDULE.epochs(niche_generation(i, S, N)) for i in range(PLANNED))
    assert study.sampler.is_finished(study)
    return finished


def test_the_registry_lists_every_way_and_gmsearch_plugins_shows_them() -> None:
    assert set(WAYS) <= set(gms.samplers.names())
    assert gms.samplers.get("niche") is gms.NicheEvolutionSampler
    rows = {(kind, name) for kind, name, _, _ in table()}
    assert {("sampler", way) for way in WAYS} <= rows
    with pytest.raises(KeyError, match="unknown sampler 'nope'; available: niche, random, regularized, restarts"):
        samplers.create("nope")
    with pytest.raises(ValueError, match="sample_size"):
        samplers.create("regularized", sample_size=0)


@pytest.mark.parametrize("name", WAYS)
def test_each_way_resumes_from_sqlite_to_the_planned_trials(name: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = gms.create_study(study_name=name, storage=url, sampler=make(name))
    first.optimize(objective, n_trials=5)  # stopped part-way, as a killed run is
    assert len(done(first)) == 5
    again = gms.create_study(study_name=name, storage=url, sampler=make(name), load_if_exists=True)
    assert runner.optimize_until_finished(again, objective)
    finished = check_complete(again, name)
    assert [t.number for t in finished][:5] == [0, 1, 2, 3, 4]  # the first five were kept, not redone
    assert again.sampler.config()["sampler"] == name


@pytest.mark.parametrize("name", WAYS)
def test_threads_give_the_planned_trials(name: str) -> None:
    study = gms.create_study(study_name=name, storage=None, sampler=make(name))
    study.optimize(objective, n_trials=100, n_jobs=2)
    check_complete(study, name)


@pytest.fixture
def url() -> Iterator[str]:
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="gmsearch-samplers-", dir=shm if shm.is_dir() else None))
    try:
        yield f"sqlite:///{folder / 'study.db'}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _open(url: str, name: str, way: str) -> optuna.Study:
    return gms.create_study(study_name=name, storage=url, sampler=make(way), heartbeat_interval=1, grace_period=5)


def _work(url: str, name: str, way: str) -> None:
    work_until_finished(_open(url, name, way), 0.02)


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork (Linux)")
@pytest.mark.parametrize("name", WAYS)
def test_two_processes_give_the_planned_trials(name: str, url: str) -> None:
    study_name = f"{name}-{uuid.uuid4().hex[:8]}"
    creator = in_child(_open, url, study_name, name)  # the parent never holds a connection across fork
    creator.join(60)
    assert creator.exitcode == 0
    workers = [in_child(_work, url, study_name, name) for _ in range(2)]
    join_all(workers, 120)
    assert [w.exitcode for w in workers] == [0, 0]
    check_complete(gms.load_study(study_name=study_name, storage=url, sampler=make(name)), name)


def test_random_genomes_are_fresh_draws_within_the_budget() -> None:
    budget = mutations.SizeBudget(max_blocks=4)
    study = gms.create_study(study_name="r", storage=None, sampler=make("random", budget=budget))
    study.optimize(objective, n_trials=PLANNED)
    for t in done(study):
        genome = gms.genome_of(t)
        assert budget.allows(genome) and t.user_attrs[PARENT_KEY] is None
        # a draw from the initial prior seeded by the trial alone: independent of every other trial
        rng = random.Random(trial_seed(SEED, t.number))
        assert genome == prior.random_genome_far_from([], 0.0, rng, budget=budget)
    assert len({gms.genome_of(t).to_json() for t in done(study)}) > PLANNED // 2


def test_regularized_takes_the_best_of_its_sample_and_ages_out_the_oldest() -> None:
    p = 4
    sampler = make("regularized", population_size=p, sample_size=2, generations=3)

    def worse_every_trial(trial: optuna.Trial) -> float:
        gms.genome_of(trial)
        return -float(trial.number)  # the oldest are the best: only aging makes them leave

    study = gms.create_study(study_name="reg", storage=None, sampler=sampler)
    study.optimize(worse_every_trial, n_trials=100)
    trials = done(study)
    assert len(trials) == gms.n_trials_for(3, p, N)
    children = [t for t in trials if t.user_attrs[PARENT_KEY] is not None]
    assert len(children) == 3 * p * N
    for child in children:
        before = [t for t in trials if t.number < child.number]  # one worker: all of them completed before it
        population = aging_population(before, p)
        assert [t.number for t in population] == [t.number for t in before[-p:]]  # the last p, oldest first
        sample, best = tournament(population, 2, random.Random(trial_seed(SEED, child.number)), study.direction)
        assert child.user_attrs[PARENT_KEY] == best.number == max(sample, key=lambda t: t.value).number
        assert child.user_attrs[GENERATION_KEY] == niche_generation(child.number, p, N)
    final = aging_population(trials, p)
    assert [t.number for t in final] == [t.number for t in trials[-p:]]
    assert trials[0].number not in {t.number for t in final}  # the best trial (0) aged out


def test_restarts_train_one_genome_under_new_seeds() -> None:
    study = gms.create_study(study_name="re", storage=None, sampler=make("restarts"))
    study.optimize(objective, n_trials=100)
    trials = check_complete(study, "restarts")
    assert {gms.genome_of(t) for t in trials} == {gms.zoo.genome("hand_a")}
    # GMObjective seeds a trial's initialisation with trial_seed(seed, trial number) and its batches with seed + number
    assert len({trial_seed(0, t.number) for t in trials}) == len(trials)
    genome = gms.zoo.genome("hand_b")
    assert make("restarts", genome=genome.to_json()).genome == genome
    with pytest.raises(ValueError, match="zoo genomes"):
        make("restarts", genome="resnet18")


def test_restarts_warn_once_per_process_about_a_genome_over_the_size_budget(caplog: pytest.LogCaptureFixture) -> None:
    budget = mutations.SizeBudget(max_blocks=3)  # hand_a has more blocks: it trains as given
    with caplog.at_level(logging.WARNING, logger="gmsearch.search.samplers.restarts"):
        for _ in range(3):  # gmsearch compare builds the sampler once per seed
            make("restarts", budget=budget)
    assert [r.getMessage().count("exceeds the size budget") for r in caplog.records] == [1]


def test_config_names_the_way_and_make_sampler_builds_it_through_the_registry() -> None:
    data = SimpleNamespace(input_shape=(1, 16, 16), num_classes=10)
    cfg = parse({"search": {"sampler": "regularized", "sampler_params": {"sample_size": 3}}})
    built = pipeline.make_sampler(cfg, data)  # type: ignore[arg-type]
    assert isinstance(built, samplers.RegularizedEvolutionSampler) and built.sample_size == 3
    assert isinstance(pipeline.make_sampler(parse({}), data), gms.NicheEvolutionSampler)  # type: ignore[arg-type]
    restarts = parse({"search": {"sampler": "restarts"}, "reference": {"name": "hand_b"}})
    assert pipeline.make_sampler(restarts, data).genome == gms.zoo.genome("hand_b")  # type: ignore[arg-type,attr-defined]
    not_zoo = parse({"search": {"sampler": "restarts"}, "reference": {"name": "resnet18"}})
    with pytest.raises(UsageError, match="sampler_params.genome"):
        pipeline.sampler_params(not_zoo)
    with pytest.raises(KeyError, match="available: niche"):
        pipeline.make_sampler(parse({"search": {"sampler": "nope"}}), data)  # type: ignore[arg-type]


def test_a_study_resumes_only_with_the_way_it_was_created_with(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = gms.create_study(study_name="w", storage=url, sampler=make("niche"))
    study.optimize(objective, n_trials=1)  # the first trial stores the settings
    same = parse({"search": {"population_size": S, "n_children": N}, "study": {"name": "w", "storage": url}})
    pipeline.check_resume(same)
    other = parse({"search": {"sampler": "random", "population_size": S, "n_children": N},
                   "study": {"name": "w", "storage": url}})
    with pytest.raises(UsageError, match="was created with sampler = 'niche'; this config has sampler = 'random'"):
        pipeline.check_resume(other)


def test_a_study_from_before_sampler_plugins_resumes_as_niche_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = gms.create_study(study_name="old", storage=url, sampler=make("niche"))
    old = {k: v for k, v in json.loads(json.dumps(make("niche").config())).items() if k != "sampler"}
    storage_of(study).set_study_system_attr(study_id_of(study), SAMPLER_KEY, old)
    with caplog.at_level(logging.WARNING):
        study.optimize(objective, n_trials=1)
    assert "other sampler settings" not in caplog.text
    pipeline.check_resume(parse({"search": {"population_size": S, "n_children": N},
                                 "study": {"name": "old", "storage": url}}))
    random_way = gms.create_study(study_name="old", storage=url, sampler=make("random"), load_if_exists=True)
    with caplog.at_level(logging.WARNING):
        random_way.optimize(objective, n_trials=1)
    assert "other sampler settings (sampler)" in caplog.text


def test_niche_immigrants_draw_children_from_the_prior_instead_of_mutating() -> None:
    def children(immigrants: float) -> list[str]:
        study = optuna.create_study(direction="maximize", sampler=make("niche", immigrants=immigrants))
        study.optimize(objective, n_trials=PLANNED)
        return [json.dumps(t.system_attrs[GENOME_KEY]) for t in done(study) if t.number >= S]

    paper, every, none = children(0.0), children(1.0), children(0.0)
    assert paper == none  # the default draws nothing extra: the paper's children, genome for genome
    assert len(every) == len(paper) and every != paper
    # an immigrant is drawn as a fresh genome is: the same draw as a random-search trial with that trial's rng
    sampler = make("niche", immigrants=1.0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=S + 1)
    child = study.trials[S]
    rng = random.Random(trial_seed(SEED, child.number))
    rng.random()  # the immigrant draw
    fresh = prior.random_genome_far_from([], 0.0, rng, budget=sampler.budget)
    assert gms.genome_of(child) == fresh and child.user_attrs[PARENT_KEY] in range(S)
    assert sampler.config()["immigrants"] == 1.0 and "immigrants" not in make("niche").config()
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="immigrants must be a share in"):
            make("niche", immigrants=bad)


def test_a_reevaluation_averages_into_its_candidate_and_children_compete_with_the_mean() -> None:
    from optuna.trial import create_trial

    from gmsearch.search.schema import REEVALUATES_KEY
    from gmsearch.search.selection import fitness_estimates, replay

    genomes = [prior.random_genome_far_from([], 0.0, random.Random(i), budget=mutations.SizeBudget()) for i in range(2)]

    def trial(number: int, value: float, genome: int, **user: object) -> FrozenTrial:
        t = create_trial(state=TrialState.COMPLETE, value=value, user_attrs=dict(user),
                         system_attrs={GENOME_KEY: genomes[genome].to_json()})
        t.number = number
        return t

    a = trial(0, 0.9, 0, **{PARENT_KEY: None})
    again = trial(1, 0.5, 0, **{PARENT_KEY: 0, REEVALUATES_KEY: 0})
    child = trial(2, 0.8, 1, **{PARENT_KEY: 0})
    directions = [optuna.study.StudyDirection.MAXIMIZE]
    lucky = replay([a, child], 1, directions)
    assert [t.number for t in lucky.slots] == [0] and lucky.replaced == {2: None}  # 0.8 < 0.9: the lucky one stays
    fair = replay([a, again], 1, directions)
    assert [t.number for t in fair.slots] == [0] and fair.values == [pytest.approx((0.7,))]
    assert fair.replaced == {1: None}
    fair = replay([a, again, child], 1, directions)
    assert [t.number for t in fair.slots] == [2] and fair.replaced == {1: None, 2: 0}  # 0.8 > mean 0.7
    assert fair.values == [(0.8,)]  # the new candidate starts from its own evaluation
    late = replay([a, again, child, trial(3, 0.1, 0, **{PARENT_KEY: 0, REEVALUATES_KEY: 0})], 1, directions)
    assert [t.number for t in late.slots] == [2] and late.values == [(0.8,)]  # trial 0 was replaced: ignored
    estimates = fitness_estimates([a, again, child])
    assert estimates == {0: pytest.approx((0.7,)), 2: (0.8,)}  # the re-evaluation has no entry of its own


def test_niche_reevaluate_trains_the_turns_parent_again_under_a_new_seed() -> None:
    from gmsearch.search.schema import REEVALUATES_KEY, REPLACED_KEY
    from gmsearch.search.selection import fitness_estimates, replay_of

    def noisy(trial: optuna.Trial) -> float:  # the same genome scores differently under another trial (seed)
        return spectrum_fitness(gms.genome_of(trial)) + 0.3 * ((trial.number * 7) % 5 - 2)

    sampler = make("niche", reevaluate=0.5, generations=4)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(noisy, n_trials=gms.n_trials_for(4, S, N))
    trials = done(study)
    again = [t for t in trials if t.user_attrs.get(REEVALUATES_KEY) is not None]
    assert again and len(again) < len(trials) - S
    by_number = {t.number: t for t in trials}
    for t in again:
        parent = by_number[t.user_attrs[PARENT_KEY]]
        assert t.user_attrs[REEVALUATES_KEY] == parent.number and gms.genome_of(t) == gms.genome_of(parent)
        assert t.user_attrs[REPLACED_KEY] is None
    result, estimates = replay_of(study), fitness_estimates(trials)
    for slot, values in zip(result.slots, result.values, strict=True):  # one worker: every re-evaluation counted
        own = [slot.value] + [t.value for t in again if t.user_attrs[REEVALUATES_KEY] == slot.number]
        assert values == pytest.approx((sum(own) / len(own),)) and estimates[slot.number] == pytest.approx(values)
    assert sampler.config()["reevaluate"] == 0.5 and "reevaluate" not in make("niche").config()
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="reevaluate must be a share in"):
            make("niche", reevaluate=bad)
    with pytest.raises(ValueError, match="immigrants \\+ reevaluate must be at most 1"):
        make("niche", immigrants=0.6, reevaluate=0.6)
