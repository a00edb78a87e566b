"""What every way of spending the search budget shares: :class:`GenomeSampler`, an Optuna sampler of genomes.

A sampler plugin (``[search] sampler``, registry :data:`registry`) is its
proposal rule (:meth:`GenomeSampler.propose`: the trial's genome, parent and
generation) and, if it has one, its population rule. This base owns the rest,
the same for every way: the settings stored on the study, the heartbeat, a
re-queued trial keeping its genome, the census of roles (trial numbers decide
them as with one worker, :mod:`gmsearch.search.census`), the wait of a surplus
trial, ``generations`` and :meth:`~GenomeSampler.is_finished`, the epoch
schedule, the one write of a trial's bookkeeping (spectrum params, parent,
generation, then the genome last: a genome on a trial means its bookkeeping is
complete) and Ctrl-C while a trial is being sampled. See
:mod:`gmsearch.search.samplers.niche` for how these work with many workers.

Every way runs ``n_trials_for(generations, population_size, n_children)``
trials. Ways whose trials all have no parent (``random``, ``restarts``) count
every trial as an "initial" one (:attr:`GenomeSampler.fresh`), and a trial's
epochs are those the niche search's trial with the same index would train,
so every way spends the same child-epochs.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, ClassVar

import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.storages import BaseStorage
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from gmsearch import interrupt
from gmsearch.config import SearchConfig
from gmsearch.errors import Interrupted
from gmsearch.nets.genome import Genome
from gmsearch.registry import Registry
from gmsearch.search import mutations, prior
from gmsearch.search._optuna_private import heartbeat_interval as _heartbeat_interval
from gmsearch.search._optuna_private import record_heartbeat as _record_heartbeat
from gmsearch.search._optuna_private import storage_of, study_id_of, trial_id_of, whole_study
from gmsearch.search.census import SETTLE_SECONDS, Census, census_of, finished, settled_of
from gmsearch.search.schema import (
    ARCH_KEY,
    EPOCHS_KEY,
    FAIL_REASON_KEY,
    GENERATION_KEY,
    GENOME_KEY,
    INTERRUPTED,
    PARENT_KEY,
    SAMPLER_KEY,
    SURPLUS_KEY,
    TOLD_FAIL_KEY,
    genome_of,
    trial_seed,
)
from gmsearch.search.writes import write_trial

logger = logging.getLogger(__name__)

SPECTRUM_PARAMS = ("n_conv", "n_pool", "n_sconv", "n_sum", "n_concat")
SPECTRUM_MAX = 64
_SPECTRUM_DIST = IntDistribution(0, SPECTRUM_MAX)


@dataclass(frozen=True)
class EpochSchedule:
    """Training epochs per generation (paper: 20, +5 every 10 generations).

    Generations 1..every train ``base`` epochs, the next ``every`` generations
    ``base + step``, and so on (paper: 1-10 train 20, 11-20 train 25, ..., 41-50
    train 40); the initial candidates (generation 0) train ``base``. The
    defaults are the paper's, as ``[search] epochs``, ``epochs_step`` and
    ``epochs_every`` of :class:`gmsearch.config.SearchConfig` give them.
    """

    base: int = SearchConfig.epochs
    step: int = SearchConfig.epochs_step
    every: int = SearchConfig.epochs_every

    def __post_init__(self) -> None:
        if self.base < 1 or self.step < 0 or self.every < 1:
            raise ValueError(f"bad epoch schedule {self}: need base >= 1, step >= 0, every >= 1")

    def epochs(self, generation: int) -> int:
        return self.base + self.step * (max(generation - 1, 0) // self.every)


#: What :meth:`GenomeSampler.propose` returns: (genome, parent trial number or None, generation), optionally with a
#: dict of more user attrs for the trial as a fourth element.
Proposal = tuple[Genome, int | None, int] | tuple[Genome, int | None, int, dict[str, Any]]


def n_trials_for(generations: int, population_size: int, n_children: int) -> int:
    """Trials Algorithm 1 runs (every way runs as many): the initial population plus ``g * s * n`` children."""
    return population_size * (1 + generations * n_children)


def niche_generation(index: int, population_size: int, n_children: int) -> int:
    """The generation of Algorithm 1's trial ``index`` (0-based, failed trials not counted): 0 for the
    initial population, then ``population_size * n_children`` trials a generation."""
    if index < population_size:
        return 0
    return (index - population_size) // (population_size * n_children) + 1


def _write(
    storage: BaseStorage,
    trial: FrozenTrial,
    *,
    user: dict[str, Any] | None = None,
    system: dict[str, Any] | None = None,
    params: dict[str, int] | None = None,
) -> None:
    """Store attrs and spectrum params of ``trial`` (:func:`write_trial`), and show them on ``trial`` too.

    ``trial`` is the snapshot a running ``optuna.Trial`` reads ``user_attrs``
    and ``params`` from, so the objective sees, e.g., ``gmsearch:epochs``.
    """
    params = params or {}
    write_trial(
        storage, trial_id_of(trial), user_attrs=user, system_attrs=system,
        params={name: (float(value), _SPECTRUM_DIST) for name, value in params.items()},
    )
    trial.user_attrs = {**trial.user_attrs, **(user or {})}
    trial.system_attrs = {**trial.system_attrs, **(system or {})}
    trial.params = {**trial.params, **params}
    trial.distributions = {**trial.distributions, **dict.fromkeys(params, _SPECTRUM_DIST)}


def _stop(study: Study) -> None:
    try:
        study.stop()
    except RuntimeError:  # ask-and-tell use, outside study.optimize: nothing to stop
        pass


class GenomeSampler(BaseSampler):
    """The shared bookkeeping of every sampler plugin; a subclass gives :meth:`propose`.

    Args:
        population_size: ``s``, number of candidates (paper: 4-5).
        n_children: ``n``, children per candidate per generation (paper: 2).
        min_distance: ``d``, minimum spectrum distance between initial candidates (paper: 4).
        mutations_per_child: Number of mutation operators per child, an int
            or an inclusive range (paper: 4-5, "aggressive mutation").
        generations: ``g``; when set, the study runs ``n_trials_for(g, s, n)``
            trials and every worker's ``optimize`` stops once all have
            finished (trials started after that are surplus and pruned at once).
        epoch_schedule: Epochs per generation told to the objective through
            the user attr ``gmsearch:epochs``; default: the paper's (20, +5
            every 10 generations). None: the objective decides.
        mutation_names: Restrict mutation operators to these names.
        mutation_weights: Relative weights of mutation operators by name.
        budget: Size budget that keeps genomes trainable.
        spectrum_scale: Per-dimension weights of the spectrum distance.
        seed: Fixes every genome (a trial's randomness derives from seed and
            trial number, so results do not depend on which worker ran it).
    """

    #: The registry name of the way (stored with the settings on the study).
    name: ClassVar[str] = ""
    #: Whether every trial is a fresh one without a parent (then every trial counts as an initial one).
    fresh: ClassVar[bool] = False

    def __init__(
        self,
        *,
        population_size: int = 4,
        n_children: int = 2,
        min_distance: float = 4.0,
        mutations_per_child: int | tuple[int, int] = (4, 5),
        generations: int | None = None,
        epoch_schedule: EpochSchedule | None = EpochSchedule(),
        mutation_names: Sequence[str] | None = None,
        mutation_weights: dict[str, float] | None = None,
        budget: mutations.SizeBudget | None = None,
        spectrum_scale: Sequence[float] | None = None,
        seed: int | None = None,
    ) -> None:
        if population_size < 1:
            raise ValueError(f"population_size must be >= 1, got {population_size}")
        if n_children < 1:
            raise ValueError(f"n_children must be >= 1, got {n_children}")
        if min_distance < 0:
            raise ValueError(f"min_distance must be >= 0, got {min_distance}")
        k = (mutations_per_child, mutations_per_child) if isinstance(mutations_per_child, int) else tuple(
            mutations_per_child
        )
        if len(k) != 2 or k[0] < 1 or k[1] < k[0]:
            raise ValueError(f"mutations_per_child must be >= 1 or a range (lo, hi), got {mutations_per_child}")
        if generations is not None and generations < 1:
            raise ValueError(f"generations must be >= 1 or None, got {generations}")
        if spectrum_scale is not None and len(spectrum_scale) != len(SPECTRUM_PARAMS):
            raise ValueError(f"spectrum_scale needs {len(SPECTRUM_PARAMS)} weights, got {spectrum_scale}")
        for name in list(mutation_names or []) + list(mutation_weights or {}):
            mutations.get(name)  # unknown operator: error listing the available ones
        self.population_size = population_size
        self.n_children = n_children
        self.min_distance = float(min_distance)
        self.mutations_per_child: tuple[int, int] = (int(k[0]), int(k[1]))
        self.generations = generations
        self.epoch_schedule = epoch_schedule
        self.mutation_names = list(mutation_names) if mutation_names else None
        self.mutation_weights = dict(mutation_weights) if mutation_weights else None
        self.budget = budget or mutations.SizeBudget()
        if self.budget.max_blocks > SPECTRUM_MAX:
            raise ValueError(f"budget.max_blocks must be <= {SPECTRUM_MAX}, got {self.budget.max_blocks}")
        self.spectrum_scale = list(spectrum_scale) if spectrum_scale else None
        self._seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self._synced: weakref.WeakKeyDictionary[BaseStorage, set[int]] = weakref.WeakKeyDictionary()
        # genomes this process just stored, per (study, trial id), until the trial is told: the objective's
        # genome_of needs no storage read
        self._running: dict[tuple[str, int], Genome] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_synced"] = None  # weak references do not pickle
        state["_running"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._synced = weakref.WeakKeyDictionary()

    def running_genome(self, study: Study, trial_id: int) -> Genome | None:
        """The genome this sampler stored on the running trial ``trial_id`` of ``study`` (None if another did)."""
        return self._running.get((study.study_name, trial_id))

    # --- what a way decides -------------------------------------------------------
    def propose(
        self, study: Study, trial: FrozenTrial, trials: list[FrozenTrial], census: Census, rng: random.Random
    ) -> Proposal:
        """The genome of ``trial``, its parent's trial number (None: none) and its generation, and optionally
        more user attrs for the trial (a dict; e.g. the niche way's ``gmsearch:reevaluates``).

        ``trials`` are the study's trials (``trial`` among them, RUNNING),
        ``census`` how they count for ``trial``, ``rng`` seeded by (seed, trial number).
        """
        raise NotImplementedError

    def initial_candidate(self, census: Census, rng: random.Random) -> tuple[Genome, None, int] | None:
        """While fewer than ``population_size`` initial candidates live: a new one at least ``min_distance``
        (spectrum distance) from each of them, without parent, in generation 0; else None (a child's turn).

        The population rule of the evolutionary ways (niche, regularized) starts here.
        """
        initial = census.initial
        if census.n_initial < self.population_size or not initial:
            genome = prior.random_genome_far_from(
                [genome_of(t) for t in initial], self.min_distance, rng, budget=self.budget
            )
            return genome, None, 0
        return None

    def mutate(self, genome: Genome, rng: random.Random) -> Genome:
        """A child of ``genome``: ``mutations_per_child`` operators of the DEAP toolbox (aggressive mutation)."""
        toolbox = mutations.toolbox(
            k=self.mutations_per_child, names=self.mutation_names, weights=self.mutation_weights, budget=self.budget,
        )
        return toolbox.aggressive(genome, rng)

    def child_generation(self, census: Census) -> int:
        """The generation of the child being sampled: its index among children over a generation's children."""
        return len(census.earlier_children) // (self.population_size * self.n_children) + 1

    def on_complete(self, study: Study, trial: FrozenTrial, trials: list[FrozenTrial], values: Sequence[float]) -> None:
        """Record what the population rule makes of ``trial``, just completed with ``values`` (default: nothing)."""

    def planned(self) -> tuple[int, int]:
        """Planned (initial, children) trials; with ``generations`` None, a huge number of initial ones."""
        if self.fresh:
            total = self.n_planned or sys.maxsize
            return total, 0
        return self.population_size, self.population_size * (self.generations or 0) * self.n_children

    @property
    def n_planned(self) -> int:
        """Trials of the ``generations`` (0 without them): :func:`n_trials_for`, the same for every way."""
        return n_trials_for(self.generations, self.population_size, self.n_children) if self.generations else 0

    # --- configuration kept on the study so every worker agrees -----------------
    def config(self) -> dict[str, Any]:
        """The settings that define the search (stored on the study).

        ``mutations`` are the operators children are drawn from: the given
        names, else every operator registered in this process.
        """
        return {
            "sampler": self.name,
            "population_size": self.population_size,
            "n_children": self.n_children,
            "min_distance": self.min_distance,
            "mutations_per_child": list(self.mutations_per_child),
            "generations": self.generations,
            "epoch_schedule": asdict(self.epoch_schedule) if self.epoch_schedule else None,
            "spectrum_scale": self.spectrum_scale,
            "mutations": sorted(self.mutation_names or mutations.names()),
            "mutation_weights": self.mutation_weights,
            "budget": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.budget).items()},
        }

    def _sync_config(self, study: Study) -> None:
        synced = self._synced.setdefault(storage_of(study), set())
        if study_id_of(study) in synced:
            return  # once per study and process: the settings never change
        synced.add(study_id_of(study))
        stored = storage_of(study).get_study_system_attrs(study_id_of(study)).get(SAMPLER_KEY)
        mine = json.loads(json.dumps(self.config()))
        if stored is None:
            storage_of(study).set_study_system_attr(study_id_of(study), SAMPLER_KEY, mine)
            return
        stored = {"sampler": "niche", **stored}  # studies from before sampler plugins ran Algorithm 1
        # generations only say when to stop: a resumed study may be given more
        differs = sorted(k for k in set(stored) | set(mine) if k != "generations" and stored.get(k) != mine.get(k))
        if differs:
            logger.warning(
                "study %r was created with other sampler settings (%s): stored %s; this process uses %s",
                study.study_name, ", ".join(differs),
                {k: stored.get(k) for k in differs}, {k: mine.get(k) for k in differs},
            )

    # --- BaseSampler --------------------------------------------------------------
    def reseed_rng(self) -> None:
        """Nothing to reseed: every draw of a trial comes from generators made for it from (seed, trial number).

        Optuna calls this in each thread of ``optimize(n_jobs > 1)`` so that
        threads do not share one random stream. This sampler keeps no stream
        between trials: a trial's genome comes from a ``random.Random`` seeded
        by :func:`~gmsearch.search.schema.trial_seed` (the only source of the
        DEAP toolbox's mutations; the global ``random`` is never used), and
        each independent param from a ``RandomSampler`` seeded by that and
        the param's name. So threads never share a stream, and a trial draws
        the same in any thread, process or worker.
        """

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        seed = random.Random(f"{trial_seed(self._seed, trial.number)}:{param_name}").randrange(2**32)
        return RandomSampler(seed=seed).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        try:
            self._sample(study, trial)
        except (Interrupted, KeyboardInterrupt):
            self._fail_interrupted(study, trial)
            raise

    def _fail_interrupted(self, study: Study, trial: FrozenTrial) -> None:
        """Ctrl-C while ``trial`` was being sampled (inside Optuna's ``ask``): fail it, never leave it RUNNING.

        Marked as failed by its worker with reason ``interrupted``: a trial that
        already has its genome is re-queued by the runner, one without is not.
        """
        storage, tid = storage_of(study), trial_id_of(trial)
        self._running.pop((study.study_name, tid), None)
        try:
            write_trial(storage, tid, user_attrs={FAIL_REASON_KEY: INTERRUPTED}, system_attrs={TOLD_FAIL_KEY: True})
            storage.set_trial_state_values(tid, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # failed as stale by another worker meanwhile (and re-queued by it)

    def _sample(self, study: Study, trial: FrozenTrial) -> None:
        study = whole_study(study)  # the census counts every trial, never one Hyperband bracket's
        self._sync_config(study)
        storage, tid = storage_of(study), trial_id_of(trial)
        heartbeat = _heartbeat_interval(storage)
        if heartbeat is not None:
            _record_heartbeat(storage, tid)  # from here on, a worker that dies leaves a stale trial
        if GENOME_KEY in trial.system_attrs:  # a re-queued trial keeps its genome and parent
            genome = genome_of(trial)
            _write(storage, trial, params=self._spectrum_params(trial, genome))
            self._running[(study.study_name, tid)] = genome
            return
        trials, census, marked = self._wait_for_a_place(study, trial, heartbeat)
        if census is None:
            return  # surplus: genome_of prunes it
        rng = random.Random(trial_seed(self._seed, trial.number))
        genome, parent, generation, *extra = self.propose(study, trial, trials, census, rng)
        # The genome is written last (write_trial's order): other workers read it as "this trial's bookkeeping
        # is complete".
        user: dict[str, Any] = {PARENT_KEY: parent, GENERATION_KEY: generation, ARCH_KEY: genome.summary()}
        for attrs in extra:  # a way's own user attrs (e.g. the niche way's gmsearch:reevaluates)
            user.update(attrs)
        if self.epoch_schedule is not None:
            user[EPOCHS_KEY] = self.epoch_schedule.epochs(generation)
        system: dict[str, Any] = {GENOME_KEY: genome.to_json()}
        if marked:  # it waited as surplus, then took a vacancy
            system[SURPLUS_KEY] = False
        _write(storage, trial, user=user, system=system, params=self._spectrum_params(trial, genome))
        self._running[(study.study_name, tid)] = genome
        # Optuna's heartbeat thread beats from the moment the objective starts

    def _wait_for_a_place(
        self, study: Study, trial: FrozenTrial, heartbeat: int | None
    ) -> tuple[list[FrozenTrial], Census | None, bool]:
        """The study's trials, this trial's census (None: surplus) and whether it was marked surplus.

        Waits briefly for earlier trials that other workers are sampling right
        now; with a heartbeat, a surplus trial waits for a vacancy (see
        :mod:`gmsearch.search.samplers.niche`).
        """
        storage, tid = storage_of(study), trial_id_of(trial)
        settle_until = time.monotonic() + SETTLE_SECONDS
        poll = min(max(heartbeat / 2, 0.1), 1.0) if heartbeat is not None else 0.0
        n_initial, n_children = self.planned()
        marked = bool(trial.system_attrs.get(SURPLUS_KEY))  # a re-queued surplus trial
        beat = time.monotonic()
        while True:
            interrupt.check()  # Ctrl-C while waiting (e.g. for other workers' trials): stop here
            trials = study.get_trials(deepcopy=False)
            census = census_of(trials, trial.number, n_initial, datetime.now(), settled_of(study))
            if census.settling and time.monotonic() < settle_until:
                time.sleep(0.02)
                if heartbeat is not None and time.monotonic() - beat > poll:
                    _record_heartbeat(storage, tid)  # a live trial never looks stale while it waits
                    beat = time.monotonic()
                continue
            if self.generations is None or census.n_initial < n_initial or census.n_children < n_children:
                return trials, census, marked
            if not marked:
                _write(storage, trial, system={SURPLUS_KEY: True})
                marked = True
            if heartbeat is None or finished(trials, n_initial, n_children, settled=settled_of(study)):
                logger.info("trial %d is surplus: the study has all its trials; stopping", trial.number)
                _stop(study)
                return trials, None, marked
            if any(t.state == TrialState.WAITING for t in trials):
                return trials, None, marked  # a re-queued trial waits: this worker runs it next
            time.sleep(poll)
            _record_heartbeat(storage, tid)
            beat = time.monotonic()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # workers that died: fail and re-queue their trials

    @staticmethod
    def _spectrum_params(trial: FrozenTrial, genome: Genome) -> dict[str, int]:
        """The spectrum counts as int params (for Optuna's param plots), those ``trial`` lacks."""
        counts = zip(SPECTRUM_PARAMS, genome.spectrum(), strict=True)
        return {name: min(int(count), SPECTRUM_MAX) for name, count in counts if name not in trial.params}

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        # ``trial`` was just read from storage by Optuna's tell, which calls this only for a RUNNING trial
        study = whole_study(study)
        self._running.pop((study.study_name, trial_id_of(trial)), None)
        if trial.state.is_finished():
            return  # another worker failed it as stale (and re-queued it); Optuna reports that
        if state == TrialState.FAIL:  # failed here, not by the heartbeat: no re-queue will follow
            storage_of(study).set_trial_system_attr(trial_id_of(trial), TOLD_FAIL_KEY, True)
        trials = study.get_trials(deepcopy=False)
        if state == TrialState.COMPLETE and values is not None and GENOME_KEY in trial.system_attrs:
            self.on_complete(study, trial, trials, values)
        if self.generations is not None:
            n_initial, n_children = self.planned()
            if finished(trials, n_initial, n_children, current=trial.number, current_state=state,
                        settled=settled_of(study)):
                _stop(study)

    def is_finished(self, study: Study) -> bool:
        """Whether every trial of the ``generations`` generations has finished (False without ``generations``)."""
        if self.generations is None:
            return False
        n_initial, n_children = self.planned()
        return finished(study.get_trials(deepcopy=False), n_initial, n_children, settled=settled_of(study))


#: The ways of spending the search budget (``[search] sampler``), each a :class:`GenomeSampler` subclass.
registry: Registry[type[GenomeSampler]] = Registry("sampler")


def fresh_index(census: Census) -> int:
    """The index of a trial of a ``fresh`` way among the study's live trials (the others counted by the census)."""
    return census.n_initial
