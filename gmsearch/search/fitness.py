"""Fitness functions: ``(clean_acc, adv_acc) -> fitness``.

``min_clean_adv`` is the paper's eq. 4 and the default. ``pareto`` returns
both accuracies for two-objective studies (its ``n_objectives`` is 2).
Plugins register with ``@gms.fitness.register("name")``.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from typing import Any

from gmsearch.registry import Registry

FitnessFn = Callable[..., Any]

registry: Registry[FitnessFn] = Registry("fitness")
register = registry.register
get = registry.get
names = registry.names


@register("min_clean_adv")
def min_clean_adv(clean_acc: float, adv_acc: float) -> float:
    """min(clean accuracy, adversarial accuracy) — paper eq. 4 (default)."""
    return min(clean_acc, adv_acc)


@register("mean")
def mean(clean_acc: float, adv_acc: float) -> float:
    """Arithmetic mean of clean and adversarial accuracy."""
    return 0.5 * (clean_acc + adv_acc)


@register("weighted")
def weighted(clean_acc: float, adv_acc: float, weight: float = 0.5) -> float:
    """weight * clean + (1 - weight) * adversarial accuracy (weight in [0, 1])."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weighted fitness: weight must be in [0, 1], got {weight}")
    return weight * clean_acc + (1.0 - weight) * adv_acc


@register("pareto")
def pareto(clean_acc: float, adv_acc: float) -> tuple[float, float]:
    """(clean accuracy, adversarial accuracy) for two-objective studies."""
    return (clean_acc, adv_acc)


def n_objectives(fn: FitnessFn) -> int:
    """How many values ``fn`` returns: its ``n_objectives`` attribute, else the length of a ``tuple[...]``
    return annotation (``-> tuple[float, float]``: two objectives), else 1."""
    inner = fn.func if isinstance(fn, functools.partial) else fn
    if hasattr(inner, "n_objectives"):
        return int(inner.n_objectives)
    try:
        returns = typing.get_type_hints(inner).get("return")
    except (NameError, TypeError):  # an annotation that does not resolve: say nothing about it
        return 1
    args = typing.get_args(returns) if typing.get_origin(returns) is tuple else ()
    return len(args) if args and Ellipsis not in args else 1


def create(name: str, **params: Any) -> FitnessFn:
    """The fitness ``name`` with its extra parameters bound (e.g. ``weight=0.7``)."""
    fn = get(name)
    return functools.partial(fn, **params) if params else fn
