"""Fitness functions: ``(clean_acc, adv_acc) -> fitness``.

``min_clean_adv`` is the paper's eq. 4 and the default. ``pareto`` returns
both accuracies for two-objective studies (its ``n_objectives`` is 2).
Plugins register with ``@gms.fitness.register("name")``.

:func:`create` returns the plugin checked: a value that is not a finite
number (or a tuple of ``n_objectives`` of them), or an exception inside the
plugin, raises :class:`FitnessValueError` naming the plugin. :func:`check`
tries a configuration once on sample accuracies, before any data is loaded.
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable
from typing import Any

from gmsearch.errors import UsageError
from gmsearch.registry import PluginError, Registry

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


class FitnessValueError(PluginError):
    """A fitness plugin returned something that is not a finite number (or tuple of them), or raised."""


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is one finite real number (a Python, NumPy or one-element torch scalar)."""
    if isinstance(value, str | bytes | bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several elements
        return None
    return number if math.isfinite(number) else None


def check_value(name: str, value: Any, n: int) -> float | tuple[float, ...]:
    """``value`` as a float (``n == 1``) or a tuple of ``n`` floats; :class:`FitnessValueError` naming the
    plugin ``name`` when it is not that (the same message for every trial, so a study can tell that its
    trials all fail for one reason)."""
    if n == 1:
        number = _finite(value)
        if number is not None:
            return number
        wanted = "a finite number"
    else:
        numbers = [_finite(v) for v in value] if isinstance(value, tuple | list) and len(value) == n else []
        if numbers and all(v is not None for v in numbers):
            return tuple(v for v in numbers if v is not None)
        wanted = f"a tuple of {n} finite numbers"
    raise FitnessValueError(
        f"fitness {name!r} returned {value!r}; a fitness must return {wanted}"
    )


def mean_of(values: list[Any]) -> Any:
    """The mean of fitness values (floats, or tuples of floats elementwise); one value as it is."""
    if len(values) == 1:
        return values[0]
    if isinstance(values[0], tuple):
        return tuple(sum(column) / len(column) for column in zip(*values, strict=True))
    return sum(values) / len(values)


def create(name: str, **params: Any) -> FitnessFn:
    """The fitness ``name`` with its extra parameters bound (e.g. ``weight=0.7``), checked.

    The callable returns a float (a tuple of floats for ``n_objectives > 1``)
    and raises :class:`FitnessValueError`, naming the plugin, on any other
    value or when the plugin raises; its ``n_objectives`` is the plugin's.
    """
    fn = get(name)
    bound = functools.partial(fn, **params) if params else fn
    n = n_objectives(bound)

    def checked(clean_acc: float, adv_acc: float) -> Any:
        try:
            value = bound(clean_acc, adv_acc)
        except FitnessValueError:
            raise
        except Exception as exc:
            what = "" if isinstance(exc, ValueError | TypeError) else f"{type(exc).__name__}: "
            raise FitnessValueError(f"fitness {name!r}: {what}{exc}") from exc
        return check_value(name, value, n)

    checked.n_objectives = n  # type: ignore[attr-defined]
    checked.__name__ = checked.__qualname__ = f"fitness[{name}]"
    checked.__doc__ = fn.__doc__
    return checked


def check(name: str, params: dict[str, Any] | None = None, *, where: str = "[fitness]") -> None:
    """Fail fast, in one line naming the plugin, on a fitness that cannot work with ``params``.

    The plugin must exist, accept ``params`` and return a finite value for
    sample accuracies (``clean_acc`` 0.75, ``adv_acc`` 0.5), so a bad
    parameter (``weight = 2``) is refused before any data is loaded.
    """
    fn = create(name, **(params or {}))
    try:
        fn(0.75, 0.5)
    except FitnessValueError as exc:
        given = f" params = {params}:" if params else ""
        raise UsageError(f"{where}{given} {exc}") from None
