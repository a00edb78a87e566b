"""One generic registry type for every plugin kind (attacks, fitness, losses, ...).

A registry maps a name to a plugin object (a class or a function). Plugins
register with a decorator; callers look them up with ``get`` or instantiate
them with ``create``. Unknown names raise an error listing the allowed ones;
a plugin that fails to start raises :class:`PluginError` naming it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gmsearch.errors import GmsearchError, UsageError

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: Every registry created, by kind, so ``gmsearch plugins`` can list them all.
REGISTRIES: dict[str, Registry[Any]] = {}

#: Entry-point group through which installed packages register plugins.
ENTRY_POINT_GROUP = "gmsearch.plugins"
_entry_points_loaded = False


def load_entry_points(*, force: bool = False) -> list[str]:
    """Import every ``gmsearch.plugins`` entry point (once); returns their names.

    An entry point may name a module (importing it registers its plugins) or a
    callable taking no arguments (called once). A broken plugin is logged and
    skipped, never fatal.
    """
    global _entry_points_loaded
    if _entry_points_loaded and not force:
        return []
    _entry_points_loaded = True
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not inspect.isclass(obj):
                obj()
            loaded.append(ep.name)
        except Exception as exc:  # a broken third-party plugin must not break gmsearch
            logger.warning("plugin entry point %r (%s) failed to load: %s", ep.name, ep.value, exc)
    return loaded


class UnknownPluginError(KeyError):
    """A plugin name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class PluginError(UsageError, TypeError):
    """A plugin that failed to start, or returned what it must not; the message names the plugin and the rule.

    Exit status 2 on the command line. It is a ``ValueError`` and a ``TypeError``
    so that callers catching what the plugin raised (a bad parameter value or
    name) still catch it.
    """


def start_plugin(kind: str, name: str, obj: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """``obj(**kwargs)``; an exception it raises comes back as :class:`PluginError` naming ``kind`` ``name``.

    gmsearch's own errors (already one clear line, with their exit status) and
    ``OSError`` (the environment: files, devices) pass unchanged.
    """
    try:
        return obj(**kwargs)
    except (GmsearchError, OSError):
        raise
    except Exception as exc:
        what = "" if isinstance(exc, ValueError | TypeError) else f"{type(exc).__name__}: "
        raise PluginError(f"{kind} {name!r}: {what}{exc}") from exc


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered plugin."""

    name: str
    obj: T
    description: str
    origin: str


def _describe(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _origin(obj: object) -> str:
    module = getattr(obj, "__module__", None) or "?"
    return "builtin" if module.startswith("gmsearch.") else module


class Registry(Generic[T]):
    """Name -> plugin mapping with ``register``, ``get``, ``create`` and ``names``.

    Args:
        kind: What the registry holds, singular (``"attack"``); used in messages.

    Example:
        >>> losses = Registry[object]("loss")
        >>> @losses.register("zero")
        ... def zero() -> float:
        ...     '''Always zero.'''
        ...     return 0.0
        >>> losses.names()
        ['zero']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        REGISTRIES[kind] = self

    def register(
        self, name: str, *, description: str | None = None, origin: str | None = None,
        replace: bool = False,
    ) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``.

        Re-registering the same object is a no-op (modules may be imported
        twice); registering a different object under a taken name raises
        unless ``replace=True``.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def decorator(obj: T) -> T:
            old = self._entries.get(name)
            same = old is not None and (
                old.obj is obj
                or (getattr(old.obj, "__qualname__", None) == getattr(obj, "__qualname__", "")
                and getattr(old.obj, "__module__", None) == getattr(obj, "__module__", ""))
            )
            if old is not None and not same and not replace:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (from {old.origin}); "
                    "pass replace=True to override it"
                )
            self._entries[name] = Entry(
                name=name,
                obj=obj,
                description=description if description is not None else _describe(obj),
                origin=origin or _origin(obj),
            )
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests and by plugins that replace built-ins)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The plugin registered under ``name``."""
        if name not in self._entries and load_entry_points():
            pass  # installed plugins may have registered it just now
        try:
            return self._entries[name].obj
        except KeyError:
            raise UnknownPluginError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names()) or '(none)'}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the plugin registered under ``name`` with ``kwargs`` (classes are instantiated).

        Raises:
            UnknownPluginError: ``name`` is not registered (the message lists the registered ones).
            PluginError: The plugin raised (a bad parameter, a bug); the message names it.
        """
        obj: Any = self.get(name)
        return start_plugin(self.kind, name, obj, kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        """Registered entries, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
