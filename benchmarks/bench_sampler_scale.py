"""(8) The evolution sampler's time per trial as a study grows: 100, 1,000 and 10,000 finished trials.

A SQLite study (gmsearch's storage settings) is filled with finished
trials of a real search's shape (initial candidates, then children with
genomes, parents and fitness), written directly through Optuna's storage
API. Then a fresh process-like view of the study (a new storage object, as a
restarted worker has) runs a few more trials with a no-op objective, and the
sampler's hooks (``before_trial``, ``after_trial``: population replay,
census, bookkeeping writes) are timed per trial. The first trial, which
reads the whole study once, is reported apart from the steady state.
"""

from __future__ import annotations

import random
import time
import warnings
from datetime import datetime, timedelta

import optuna
from optuna.trial import TrialState

import gmsearch as gms
from benchmarks import trials
from benchmarks.common import Context, Line, at_most, log
from gmsearch.nets.genome import Genome
from gmsearch.search import schema
from gmsearch.search.sampler import SPECTRUM_PARAMS
from gmsearch.search.study import make_storage

HOOKS = ["before_trial", "after_trial"]


def _fill(url: str, n: int, seed: int) -> None:
    """Write ``n`` finished trials shaped like a search's into a new study named ``scale``.

    One transaction for them all (through Optuna's RDB internals, to keep the benchmark short).
    """
    from optuna.storages._rdb.storage import _create_scoped_session

    storage = make_storage(url, heartbeat_interval=None)
    assert isinstance(storage, optuna.storages.RDBStorage)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "scale")
    sampler = trials.sampler(seed)
    rng = random.Random(seed)
    genomes = [Genome.from_json(g) for g in _genomes(sampler, 12, seed)]
    population = sampler.population_size
    start = datetime.now() - timedelta(days=1)
    with _create_scoped_session(storage.scoped_session) as session:
        for number in range(n):
            genome = genomes[number % len(genomes)]
            child = number >= population
            fitness = rng.random()
            state = TrialState.COMPLETE if rng.random() > 0.05 else TrialState.FAIL
            params = dict(zip(SPECTRUM_PARAMS, genome.spectrum(), strict=True))
            template = optuna.trial.create_trial(
                state=state,
                value=fitness if state == TrialState.COMPLETE else None,
                params=params,
                distributions={k: optuna.distributions.IntDistribution(0, 64) for k in params},
                user_attrs={
                    schema.PARENT_KEY: rng.randrange(number) if child else None,
                    schema.GENERATION_KEY: (number - population) // (2 * population) + 1 if child else 0,
                    schema.ARCH_KEY: genome.summary(),
                    "clean_acc": fitness, "adv_acc": fitness,
                },
                system_attrs={schema.GENOME_KEY: genome.to_json()},
            )
            template.datetime_start = start + timedelta(seconds=number)
            template.datetime_complete = start + timedelta(seconds=number + 1)
            storage._get_prepared_new_trial(study_id, template, session)


def _genomes(sampler: gms.NicheEvolutionSampler, n: int, seed: int) -> list[str]:
    """``n`` real genomes: the sampler's own initial candidates and children (in memory)."""
    study = optuna.create_study(sampler=sampler, direction="maximize")
    rng = random.Random(seed)
    study.optimize(lambda t: rng.random(), n_trials=n)
    return [t.system_attrs[schema.GENOME_KEY] for t in study.trials]


def _measure(url: str, n_new: int, seed: int) -> tuple[float, list[float]]:
    """(first trial's hook seconds, the others' hook seconds) on a freshly opened storage."""
    storage = make_storage(url)  # gmsearch's settings, heartbeat included, as a worker opens it
    sampler = trials.sampler(seed)
    timer = trials.CallTimer()
    timer.instrument("hooks", sampler, HOOKS)
    study = optuna.load_study(study_name="scale", storage=storage, sampler=sampler)
    per_trial: list[float] = []
    for _ in range(n_new):
        before = timer.total("hooks")
        trial = study.ask()
        study.tell(trial, random.random())
        per_trial.append(timer.total("hooks") - before)
    return per_trial[0], per_trial[1:]


def run(ctx: Context) -> list[Line]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    sizes = (100, 1_000) if ctx.quick else (100, 1_000, 10_000)
    lines = []
    steady: dict[int, float] = {}
    for n in sizes:
        url = f"sqlite:///{ctx.workdir / f'scale_{n}.db'}"
        t0 = time.perf_counter()
        _fill(url, n, ctx.seed)
        fill = time.perf_counter() - t0
        first, rest = _measure(url, 6, ctx.seed)
        rest.sort()
        steady[n] = rest[len(rest) // 2]
        log(f"sampler_scale: {n} trials (written in {fill:.1f} s): first trial {first * 1e3:.1f} ms, "
            f"then median {steady[n] * 1e3:.1f} ms per trial")
        lines.append(Line(f"sampler_ms_per_trial[{n} finished trials]",
                          f"{steady[n] * 1e3:.1f} ms (first trial of a fresh worker {first * 1e3:.0f} ms)"))
    small, large = steady[sizes[0]], steady[sizes[-1]]
    lines.append(at_most(f"sampler_growth[{sizes[-1]} vs {sizes[0]} trials]", large / small, 3.0,
                         note=" (per-trial sampler time; O(1) amortised would be ~1x)"))
    return lines
