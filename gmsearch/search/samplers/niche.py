"""Algorithm 1 of the paper as an Optuna sampler (the `niche` way, the default).

:class:`NicheEvolutionSampler` is a steady-state, spectrum-niched
neuroevolution (paper section 3.2, Algorithm 1) on Optuna trials. It keeps no
search state of its own: every decision is derived from the study's trials,
so restarted processes and any number of workers rebuild the same population
(each process keeps the replay up to date incrementally, a cache that
always equals the replay from scratch).

Per trial (``before_trial``):

- While fewer than ``population_size`` initial candidates exist (running ones
  counted, failed ones not), the trial becomes a new initial candidate: a
  random genome at least ``min_distance`` (spectrum distance, eq. 3) from
  every live initial genome.
- Otherwise it is the k-th child (children counted in trial-number order,
  failed ones not counted) and belongs to slot ``(k // n_children) %
  population_size``. The first child of a turn takes the candidate in that
  slot of the current population as parent; the turn's other children take
  the same parent even if it was replaced meanwhile. The child's genome is an
  aggressive mutation (k operators from the DEAP toolbox of registered
  mutation plugins) of the parent's.

Many workers: a trial another worker is still sampling (RUNNING, no genome
yet) counts as the initial candidate or child it is about to become, and a
trial waits (briefly) for earlier ones being sampled, so trial numbers decide
roles as with one worker and initial candidates stay ``min_distance`` apart.
Each trial writes its spectrum params, parent and generation before its
genome, so a genome on a trial means its bookkeeping is complete. A trial the heartbeat
has just failed keeps its place until Optuna has re-queued it (the sampler
marks trials failed by their own worker, which are never re-queued, with
``gmsearch:told_fail``). With ``generations`` set, a trial started
after every planned trial is taken is *surplus*: it is marked
``gmsearch:surplus``, gets no genome, and :func:`genome_of` prunes it at
once. On storages with a heartbeat a surplus trial first waits, failing
stale trials itself, until the planned trials are all finished (then every
worker stops), a dead worker's trial is re-queued (then it is picked up
next) or a failed one leaves a vacancy (then this trial takes it). So no
worker quits while a dead worker's trial may still need a retry. A Ctrl-C
(:mod:`gmsearch.interrupt`) stops that wait; a trial interrupted while being
sampled is failed with reason ``interrupted`` (re-queued by the runner when it
already has its genome), never left RUNNING.

The population (:func:`replay`) is a deterministic replay of completed
trials in completion order: initial candidates fill the slots; each child
replaces the candidate closest to it in spectrum distance (first closest by
slot on ties) when its fitness is strictly better (for two objectives: when
it dominates), taking that slot. Failed and pruned trials never enter. A
child's ``gmsearch:replaced`` is written when it finishes, from the trials
finished by then: a trial another worker finishes within those few
milliseconds can come first in the replay (a finished trial cannot be
updated afterwards, so :func:`gmsearch.lineage` is the final word).

Storage keys: system attr ``gmsearch:genome``; user attrs
``gmsearch:parent``, ``gmsearch:generation``, ``gmsearch:replaced``,
``gmsearch:epochs`` (when an epoch schedule is set), ``gmsearch:architecture``,
``gmsearch:reevaluates`` (with ``reevaluate``: the candidate a trial trains again);
system attrs ``gmsearch:surplus`` (trials started after the last generation)
and ``gmsearch:told_fail`` (trials failed by their worker). A running
objective sees the user attrs through ``trial.user_attrs``.
The spectrum counts are set as int params so Optuna's param plots work.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from optuna.study import Study
from optuna.trial import FrozenTrial

from gmsearch.search import prior
from gmsearch.search._optuna_private import storage_of, trial_id_of
from gmsearch.search.census import Census
from gmsearch.search.samplers._base import GenomeSampler, Proposal, registry
from gmsearch.search.schema import GENOME_KEY, PARENT_KEY, REEVALUATES_KEY, REPLACED_KEY, genome_of, is_child
from gmsearch.search.selection import replay_study


@registry.register("niche")
class NicheEvolutionSampler(GenomeSampler):
    """Steady-state spectrum-niched neuroevolution (paper Algorithm 1) as an Optuna sampler; the default way.

    Operiano et al., "Evolving Architectures with Gradient Misalignment toward
    Low Adversarial Transferability", 2021, section 3.2 and Algorithm 1.

    Args:
        population_size: ``s``, number of candidates (paper: 4-5).
        n_children: ``n``, children per candidate per generation (paper: 2).
        min_distance: ``d``, minimum spectrum distance between initial candidates (paper: 4).
        mutations_per_child: Number of mutation operators per child, an int
            or an inclusive range (paper: 4-5, "aggressive mutation").
        generations: ``g``; when set, every worker's ``optimize`` stops once
            all trials of generations ``1..g`` have finished (trials started
            after that are surplus and pruned at once; see the module docstring).
        epoch_schedule: Epochs per generation told to the objective through
            the user attr ``gmsearch:epochs``; default: the paper's (20, +5
            every 10 generations), as ``gmsearch run`` uses it. None: the
            objective decides (``GMObjective(epochs=...)`` for every trial).
        mutation_names: Restrict mutation operators to these names.
        mutation_weights: Relative weights of mutation operators by name.
        budget: Size budget that keeps children trainable.
        spectrum_scale: Per-dimension weights of the spectrum distance.
        seed: Fixes every genome (a trial's randomness derives from seed and
            trial number, so results do not depend on which worker ran it).
        immigrants: Share of children drawn fresh from the initial-population
            prior instead of mutated from their parent ("random immigrants",
            Grefenstette 1992; not the paper's: default 0). An immigrant keeps
            its turn's parent as ``gmsearch:parent`` and competes like any child
            (it replaces the candidate closest to it when better).
        reevaluate: Share of children that instead train their turn's parent again under a new seed, when
            the parent still holds its slot (not the paper's: default 0). The re-evaluation trial
            (``gmsearch:reevaluates``) takes no slot; the parent's fitness becomes the mean of its
            evaluations, so a candidate kept by one lucky evaluation falls back and can be replaced
            (re-evaluation of elites in noisy evolution; Jin and Branke 2005).

    Example:
        >>> sampler = NicheEvolutionSampler(population_size=4, n_children=2, seed=0)
        >>> study = optuna.create_study(direction="maximize", sampler=sampler)
    """

    name = "niche"

    def __init__(self, *, immigrants: float = 0.0, reevaluate: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, share in (("immigrants", immigrants), ("reevaluate", reevaluate)):
            if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be a share in [0, 1], got {share!r}")
        if immigrants + reevaluate > 1.0:
            raise ValueError(f"immigrants + reevaluate must be at most 1, got {immigrants} + {reevaluate}")
        self.immigrants, self.reevaluate = float(immigrants), float(reevaluate)

    def config(self) -> dict[str, Any]:
        options = {"immigrants": self.immigrants, "reevaluate": self.reevaluate}
        return {**super().config(), **{k: v for k, v in options.items() if v}}  # the paper's: none stored

    def propose(
        self, study: Study, trial: FrozenTrial, trials: list[FrozenTrial], census: Census, rng: random.Random
    ) -> Proposal:
        first = self.initial_candidate(census, rng)
        if first is not None:
            return first
        initial = census.initial
        k = len(census.earlier_children)
        generation = self.child_generation(census)
        turn_start = k - k % self.n_children
        first_of_turn = census.earlier_children[turn_start] if turn_start < k else None
        replayed: list[FrozenTrial] | None = None
        if first_of_turn is not None and GENOME_KEY in first_of_turn.system_attrs:
            parent = int(first_of_turn.user_attrs[PARENT_KEY])  # the turn's parent, as it was
            parent_trial = next(t for t in trials if t.number == parent)
        else:
            # ``trials`` holds this trial RUNNING: only COMPLETE ones enter the replay
            replayed = replay_study(study, trials, self.population_size, scale=self.spectrum_scale).slots
            slots = replayed or initial  # no candidate finished yet: take the live initial ones (never wait)
            slot = (k // self.n_children) % self.population_size
            parent_trial = slots[slot % len(slots)]
            parent = parent_trial.number
        draw = rng.random() if self.immigrants or self.reevaluate else 1.0
        if draw < self.immigrants:
            return prior.random_genome_far_from([], 0.0, rng, budget=self.budget), parent, generation
        if draw < self.immigrants + self.reevaluate:
            if replayed is None:
                replayed = replay_study(study, trials, self.population_size, scale=self.spectrum_scale).slots
            if any(t.number == parent for t in replayed):  # a candidate replaced meanwhile is not re-evaluated
                return genome_of(parent_trial), parent, generation, {REEVALUATES_KEY: parent}
        return self.mutate(genome_of(parent_trial), rng), parent, generation

    def on_complete(self, study: Study, trial: FrozenTrial, trials: list[FrozenTrial], values: Sequence[float]) -> None:
        """A child's ``gmsearch:replaced``: the candidate it replaced in the replay (None: none)."""
        if not is_child(trial):
            return
        # ``trials`` holds this trial RUNNING; it enters the replay last, as ``extra``
        result = replay_study(study, trials, self.population_size, scale=self.spectrum_scale, extra=(trial, values))
        storage_of(study).set_trial_user_attr(trial_id_of(trial), REPLACED_KEY, result.replaced.get(trial.number))
