"""Pruners: stop children early. :class:`NichePruner` stops a child that cannot beat its rival.

Algorithm 1 keeps a child only when its final fitness is strictly better than
that of its *rival*, the candidate closest to it in spectrum distance (first
closest on ties). Training a child that ends up behind its rival buys nothing;
:class:`NichePruner` compares the child's per-epoch validation fitness with
the rival's stored learning curve and stops the child once it is clearly
behind. Pruned trials never enter the population (the replay counts
COMPLETE trials only) but keep their learning curve.

Pruners register like every other plugin kind: ``niche`` (this module's
:class:`NichePruner`) and Optuna's own ``median``, ``hyperband`` and ``nop``::

    pruner = gms.pruners.create("niche", warmup=1, margin=0.08)
    study = gms.create_study(study_name="digits", sampler=sampler, pruner=pruner)

:func:`create` makes every pruner safe under the sampler (:func:`children_only`):
initial candidates are never pruned, and a ``HyperbandPruner`` no longer makes
Optuna hand the sampler one bracket's view of the study. (Given directly, the
sampler still reads the whole study, and a pruned initial candidate is replaced
like a failed one.)

Storage keys (user attrs of a child trial) are listed in the block below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from gmsearch.nets.genome import spectrum_distance
from gmsearch.registry import Registry
from gmsearch.search._optuna_private import storage_of, study_id_of, trial_id_of
from gmsearch.search.sampler import NicheEvolutionSampler
from gmsearch.search.schema import (
    GENOME_KEY,
    PARENT_KEY,
    PRUNE_SHADOW_KEY,
    RIVAL_KEY,
    SAMPLER_KEY,
    WOULD_PRUNE_KEY,
    genome_of,
)
from gmsearch.search.selection import replay, replay_of, replay_study

PrunerFactory = Callable[..., BasePruner]

registry: Registry[PrunerFactory] = Registry("pruner")
register = registry.register
get = registry.get
names = registry.names


def create(name: str, **params: Any) -> BasePruner:
    """The pruner ``name`` built with ``params`` (e.g. ``create("niche", margin=0.05)``), safe under the
    sampler (:func:`children_only`)."""
    pruner: BasePruner = registry.create(name, **params)
    return children_only(pruner)


class ChildrenOnly(BasePruner):
    """``inner`` asked about children only: initial candidates always train in full.

    Algorithm 1's initial candidates are the first ``population_size`` trials
    without a parent to complete; a pruned one never enters the population and
    is only lost work (another takes its place). Trials without the sampler's
    ``gmsearch:parent`` (not a gmsearch study), and every trial of a way with
    no population (a sampler whose trials are all fresh draws, ``fresh``:
    ``random``, ``restarts``), go to ``inner`` as they are.
    Wrapped, a ``HyperbandPruner`` is no longer the study's pruner, so Optuna
    hands the sampler the whole study instead of one bracket's trials; it still
    brackets its own decisions.
    """

    def __init__(self, inner: BasePruner) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"ChildrenOnly({self.inner!r})"

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """``inner``'s decision for a child; False for an initial candidate (a sampler whose trials are all fresh
        draws, ``fresh``, has none: ``inner`` decides every trial)."""
        if PARENT_KEY in trial.user_attrs and trial.user_attrs[PARENT_KEY] is None \
                and not getattr(study.sampler, "fresh", False):
            return False
        return bool(self.inner.prune(study, trial))


def children_only(pruner: BasePruner) -> BasePruner:
    """``pruner`` as it is when it never stops an initial candidate (``NopPruner``, :class:`NichePruner`), else in
    :class:`ChildrenOnly`. Every pruner :func:`create` makes goes through it."""
    if isinstance(pruner, optuna.pruners.NopPruner | NichePruner | ChildrenOnly):
        return pruner
    return ChildrenOnly(pruner)


def _search_settings(study: Study) -> tuple[int | None, list[float] | None]:
    """Population size and spectrum scale of the study's search (sampler, else stored settings)."""
    if isinstance(study.sampler, NicheEvolutionSampler):
        return study.sampler.population_size, study.sampler.spectrum_scale
    stored = storage_of(study).get_study_system_attrs(study_id_of(study)).get(SAMPLER_KEY) or {}
    return stored.get("population_size"), stored.get("spectrum_scale")


def rival_of(
    trials: Sequence[FrozenTrial],
    child: FrozenTrial,
    population_size: int,
    directions: Sequence[StudyDirection],
    *,
    scale: Sequence[float] | None = None,
) -> FrozenTrial | None:
    """The candidate ``child`` would replace: the closest in spectrum distance in the population of ``trials``.

    The population is :func:`~gmsearch.search.selection.replay` of ``trials`` (only
    COMPLETE ones count; ``child`` itself is left out). First closest by slot
    on ties, as in the sampler's selection.

    Returns:
        The rival, or None when the population is empty or ``child`` has no genome.
    """
    if GENOME_KEY not in child.system_attrs:
        return None
    others = [t for t in trials if t.number != child.number]
    return _closest(child, replay(others, population_size, directions, scale=scale).slots, scale)


def _closest(child: FrozenTrial, slots: Sequence[FrozenTrial], scale: Sequence[float] | None) -> FrozenTrial | None:
    """The candidate in ``slots`` closest to ``child`` in spectrum distance (first by slot on ties)."""
    if not slots:
        return None
    genome = genome_of(child)
    distances = [spectrum_distance(genome, genome_of(t), scale) for t in slots]
    return slots[distances.index(min(distances))]


def curve_value(curve: Mapping[int, float], epoch: int) -> float | None:
    """A rival's fitness at ``epoch`` from its stored learning curve (epoch -> value).

    Its intermediate value at ``epoch``; when the rival trained fewer epochs,
    its last value before ``epoch``; None when it has no curve.
    """
    if not curve:
        return None
    if epoch in curve:
        return float(curve[epoch])
    earlier = [step for step in curve if step <= epoch]
    return float(curve[max(earlier)]) if earlier else None


def bar(curve: Mapping[int, float], final: float | None, epoch: int, direction: StudyDirection) -> float | None:
    """What a child must reach at ``epoch`` to be level with its rival: the rival's value at ``epoch``
    (:func:`curve_value`), or its final value when that is worse (lower when maximising).

    Replacement is decided against the rival's final value; a rival whose curve
    peaks and then falls must not make children that end above its final value stop.
    None when the rival has no curve.
    """
    at = curve_value(curve, epoch)
    if at is None or final is None or not math.isfinite(final):
        return at
    return min(at, final) if direction == StudyDirection.MAXIMIZE else max(at, final)


def behind_by(child_value: float, rival: float, direction: StudyDirection) -> float:
    """How far ``child_value`` is behind ``rival`` (positive: behind) for the study's direction."""
    gap = rival - child_value
    return gap if direction == StudyDirection.MAXIMIZE else -gap


class NichePruner(BasePruner):
    """Stop a child whose validation fitness is clearly behind its rival's at the same epoch.

    A child (a trial with a ``gmsearch:parent``) is stopped at epoch ``e >
    warmup`` when its intermediate value is below the rival's bar at epoch
    ``e`` by more than ``margin`` (:func:`bar`: the rival's intermediate value
    at ``e``, or its final value, which decides replacement, when that is
    lower; the other way round when minimising). The rival is the candidate
    the child would replace (closest in spectrum distance in the current
    population, first closest on ties), recomputed at every epoch from
    storage so many workers agree; its number is stored on the child as
    ``gmsearch:rival``. When the rival trained fewer epochs, its last value
    stands for the later epochs. Initial candidates, children without a rival
    or without a rival curve, and multi-objective studies are never pruned.
    The first epoch at which the rule fires is stored as
    ``gmsearch:would_prune``; in shadow mode nothing is stopped, so one run
    measures what the rule would save and what it would lose
    (:func:`shadow_report`).

    Design data: learning curves measured without stopping (scikit-learn
    digits at 8x8, ``hand_a`` reference, L-inf PGD eps 0.2 transferred from
    it, fitness ``min(clean, adv)`` on the validation split, population 4 x 2
    children, 4 generations, 6-8 epochs per child (epoch schedule 6, +1
    every 2 generations), seeds 10-12: 96 children, 26 of which replaced
    their rival). Gap = rival's value minus the child's at the same epoch
    (positive: child behind), median [10th, 90th percentile] and the extreme
    (for children that replaced: the most they were *ahead*, for losers the
    most they were behind):

    =====  ===============================  ===============================
    epoch  children that replaced (n=26)    children that lost (n=70)
    =====  ===============================  ===============================
    1      -0.017 [-0.183, +0.074] (-0.469)  +0.014 [-0.034, +0.177] (+0.483)
    2      -0.049 [-0.256, +0.065] (-0.413)  +0.066 [-0.041, +0.364] (+0.573)
    3      -0.091 [-0.391, +0.094] (-0.476)  +0.094 [-0.020, +0.414] (+0.692)
    4      -0.077 [-0.397, +0.036] (-0.462)  +0.182 [-0.006, +0.405] (+0.713)
    5      -0.126 [-0.359, +0.032] (-0.483)  +0.220 [+0.022, +0.440] (+0.727)
    6      -0.119 [-0.355, +0.001] (-0.406)  +0.203 [+0.007, +0.439] (+0.636)
    =====  ===============================  ===============================

    Losers fall behind early and stay behind; most winners are level or
    ahead from the first epochs, but a few late bloomers trail by up to 0.23
    in epochs 1-3 (by at most 0.12 from epoch 4). The rule replayed on those
    curves (``benchmarks/search_cost.py --sweep``; measured when the bar was
    the rival's value at ``e`` alone, before it took the rival's final value
    too): share of losers stopped, winners stopped (missed replacements) and
    child-epochs saved:

    ======  ======  =====  ===========  =====
    warmup  margin  lost   replaced     saved
    ======  ======  =====  ===========  =====
    0       0.00    98.6%  15/26 57.7%  63.7%
    0       0.05    92.9%  6/26 23.1%   51.6%
    0       0.10    82.9%  2/26 7.7%    40.0%
    1       0.05    92.9%  4/26 15.4%   45.1%
    1       0.08    87.1%  2/26 7.7%    40.5%  (default)
    1       0.10    82.9%  2/26 7.7%    37.8%
    2       0.08    85.7%  2/26 7.7%    33.8%
    3       0.12    78.6%  0/26 0.0%    23.8%
    ======  ======  =====  ===========  =====

    The defaults ``warmup=1, margin=0.08`` stop 87% of the losers and 2 of 26
    children that would have replaced (3.2% of the stopped ones) and save
    about 40% of child-epochs. Both missed children won narrowly (+0.014 and
    +0.007, one or two of 143 validation images). Saving 50% or more with
    this rule shape costs missed replacements (warmup 0, margin 0.05: 6 of
    71 stopped children, 8.5%); margin 0.12 after 3 epochs missed none but
    saves a quarter.

    Args:
        warmup: Epochs every child trains before it can be stopped (>= 0).
        margin: How far (in fitness units) the child may trail its rival
            before it is stopped (>= 0).
        shadow: Record decisions on the trial but never stop it.
        population_size: Slots of the population (None: from the study's
            :class:`~gmsearch.NicheEvolutionSampler` or its stored settings).

    Example:
        >>> pruner = NichePruner(warmup=1, margin=0.08)
        >>> study = optuna.create_study(direction="maximize", pruner=pruner)
    """

    def __init__(
        self,
        *,
        warmup: int = 1,
        margin: float = 0.08,
        shadow: bool = False,
        population_size: int | None = None,
    ) -> None:
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an int >= 0 (epochs), got {warmup!r}")
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin) \
                or margin < 0:
            raise ValueError(f"margin must be a finite number >= 0 (fitness units), got {margin!r}")
        if not isinstance(shadow, bool):
            raise ValueError(f"shadow must be True or False, got {shadow!r}")
        if population_size is not None and (
            isinstance(population_size, bool) or not isinstance(population_size, int) or population_size < 1
        ):
            raise ValueError(f"population_size must be an int >= 1 or None, got {population_size!r}")
        self.warmup = warmup
        self.margin = float(margin)
        self.shadow = shadow
        self.population_size = population_size

    def __repr__(self) -> str:
        return (
            f"NichePruner(warmup={self.warmup}, margin={self.margin}, shadow={self.shadow}, "
            f"population_size={self.population_size})"
        )

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """Whether ``trial`` (a running child) should stop now; records the rival and the decision."""
        if len(study.directions) > 1 or trial.user_attrs.get(PARENT_KEY) is None:
            return False
        epoch = trial.last_step
        if epoch is None or epoch <= self.warmup:
            return False
        value = trial.intermediate_values[epoch]
        if not math.isfinite(value):
            return False  # a diverging child fails by itself
        size, scale = _search_settings(study)
        size = self.population_size or size
        if size is None:
            return False  # not a gmsearch study: no population to compare with
        if GENOME_KEY not in trial.system_attrs:
            return False
        # the study's trials hold this one RUNNING: only COMPLETE ones enter the replay
        rival = _closest(trial, replay_study(study, study.get_trials(deepcopy=False), size, scale=scale).slots, scale)
        if rival is None:
            return False
        storage = storage_of(study)
        # a running Trial hands pruners a snapshot whose user attrs miss writes made here: read them afresh
        attrs = storage.get_trial_user_attrs(trial_id_of(trial))
        if attrs.get(RIVAL_KEY) != rival.number:
            storage.set_trial_user_attr(trial_id_of(trial), RIVAL_KEY, rival.number)
        target = bar(rival.intermediate_values, rival.value, epoch, study.direction)
        if target is None or behind_by(value, target, study.direction) <= self.margin:
            return False
        if attrs.get(WOULD_PRUNE_KEY) is None:
            storage.set_trial_user_attr(trial_id_of(trial), WOULD_PRUNE_KEY, epoch)
            storage.set_trial_user_attr(trial_id_of(trial), PRUNE_SHADOW_KEY, self.shadow)
        return not self.shadow


register("niche")(NichePruner)
register("nop", description="Never prunes (Optuna's NopPruner): every child trains all its epochs.")(
    optuna.pruners.NopPruner
)
register("median", description="Optuna's MedianPruner: stop below the median of earlier trials at a step.")(
    optuna.pruners.MedianPruner
)
register("hyperband", description="Optuna's HyperbandPruner (successive halving over brackets).")(
    optuna.pruners.HyperbandPruner
)


def _children(study: Study) -> list[FrozenTrial]:
    return [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if GENOME_KEY in t.system_attrs and t.user_attrs.get(PARENT_KEY) is not None
    ]


def shadow_report(study: Study, *, population_size: int | None = None) -> dict[str, Any]:
    """What a :class:`NichePruner` decided on ``study``'s finished children, from storage alone.

    Most useful after a run with ``NichePruner(shadow=True)``: children train
    to the end, so the report knows which stopped children would in fact
    have replaced their rival (missed replacements). Replacements are the
    replay's (:func:`~gmsearch.search.selection.replay_of`, as in
    :func:`gmsearch.lineage`), not each worker's own ``gmsearch:replaced``,
    which another worker's trial finishing at the same moment can make
    wrong. After a real pruning run the stopped children are PRUNED and
    never replace (``missed`` is 0). ``population_size``: as for
    :func:`learning_curves`.

    Returns:
        ``children`` (finished children), ``child_epochs`` (epochs they
        trained), ``stopped`` (children with a prune decision),
        ``stopped_share``, ``epochs_saved`` (epochs trained after the
        decision; 0 for really pruned runs), ``epochs_saved_share`` (of
        ``child_epochs``), ``replacements`` (children that replaced their
        rival), ``missed`` (stopped children that replaced their rival),
        ``missed_share`` (of ``stopped``) and ``missed_of_replacements``
        (of ``replacements``). Shares are 0.0 when their base is 0.
    """
    children = _children(study)
    replaced = replay_of(study, population_size).replaced
    epochs = {t.number: len(t.intermediate_values) for t in children}
    stopped = [t for t in children if t.user_attrs.get(WOULD_PRUNE_KEY) is not None]
    saved = sum(max(epochs[t.number] - int(t.user_attrs[WOULD_PRUNE_KEY]), 0) for t in stopped)
    replacements = [t for t in children if replaced.get(t.number) is not None]
    missed = [t for t in stopped if replaced.get(t.number) is not None]
    total = sum(epochs.values())

    def share(a: int, b: int) -> float:
        return a / b if b else 0.0

    return {
        "children": len(children),
        "child_epochs": total,
        "stopped": len(stopped),
        "stopped_share": share(len(stopped), len(children)),
        "epochs_saved": saved,
        "epochs_saved_share": share(saved, total),
        "replacements": len(replacements),
        "missed": len(missed),
        "missed_share": share(len(missed), len(stopped)),
        "missed_of_replacements": share(len(missed), len(replacements)),
        "missed_trials": [t.number for t in missed],
    }


def learning_curves(study: Study, *, population_size: int | None = None) -> list[dict[str, Any]]:
    """One row per finished child: its curve, its rival's curve and whether it replaced.

    The rival is the one stored by :class:`NichePruner` (``gmsearch:rival``);
    otherwise it is recomputed from the trials that had finished when the
    child started (exact for one worker). Rows: ``number``, ``state``,
    ``curve`` and ``rival_curve`` (epoch -> value), ``rival``, ``value``,
    ``rival_value`` and ``replaced`` (bool, from the replay as in :func:`shadow_report`).
    """
    size, scale = _search_settings(study)
    size = population_size or size
    if size is None:
        raise ValueError(f"study {study.study_name!r} has no gmsearch sampler settings; pass population_size")
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    replaced = replay(trials, size, study.directions, scale=scale).replaced
    rows = []
    for child in _children(study):
        number = child.user_attrs.get(RIVAL_KEY)
        rival = by_number.get(number) if number is not None else None
        if rival is None and child.datetime_start is not None:
            start = child.datetime_start
            before = [t for t in trials if t.datetime_complete is not None and t.datetime_complete <= start]
            rival = rival_of(before, child, size, study.directions, scale=scale)
        if rival is None:
            continue
        rows.append({
            "number": child.number,
            "state": child.state.name,
            "curve": dict(sorted(child.intermediate_values.items())),
            "rival": rival.number,
            "rival_curve": dict(sorted(rival.intermediate_values.items())),
            "value": child.value,
            "rival_value": rival.value,
            "replaced": replaced.get(child.number) is not None,
        })
    return rows


def would_prune_at(row: dict[str, Any], *, warmup: int, margin: float, maximize: bool = True) -> int | None:
    """The epoch at which the NichePruner rule stops the child of a :func:`learning_curves` row (None: never)."""
    direction = StudyDirection.MAXIMIZE if maximize else StudyDirection.MINIMIZE
    curve: dict[int, float] = row["curve"]
    rival: dict[int, float] = row["rival_curve"]
    for epoch in sorted(curve):
        if epoch <= warmup or not math.isfinite(curve[epoch]):
            continue
        target = bar(rival, row.get("rival_value"), epoch, direction)
        if target is not None and behind_by(curve[epoch], target, direction) > margin:
            return epoch
    return None
