"""Plugin discovery: entry points of installed packages and plugin folders.

A plugin folder follows the OptunaHub layout: ``<name>/__init__.py`` (which
registers plugins with the registries' decorators) and ``<name>/README.md``.
Folders are loaded by path, or by name from the search path:
``$GMSEARCH_PLUGIN_PATH`` (``os.pathsep``-separated), ``./plugins`` and the
``plugins/`` folder of a source checkout.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from gmsearch.registry import REGISTRIES, load_entry_points

_loaded: dict[Path, ModuleType] = {}


def search_path() -> list[Path]:
    """Folders searched for plugins by name, in order."""
    paths = [Path(p) for p in os.environ.get("GMSEARCH_PLUGIN_PATH", "").split(os.pathsep) if p]
    paths.append(Path.cwd() / "plugins")
    checkout = Path(__file__).resolve().parents[1] / "plugins"
    if checkout not in paths:
        paths.append(checkout)
    return [p for p in paths if p.is_dir()]


def available() -> dict[str, Path]:
    """Plugin folders found on the search path, by name (first found wins)."""
    found: dict[str, Path] = {}
    for root in search_path():
        for child in sorted(root.iterdir()):
            if (child / "__init__.py").is_file() and child.name not in found:
                found[child.name] = child
    return found


def load_plugin(name_or_path: str | Path) -> ModuleType:
    """Import a plugin folder (or a single ``.py`` file) so its plugins register.

    Args:
        name_or_path: A folder or file path, or the name of a folder on
            :func:`search_path`.

    Raises:
        ValueError: Nothing of that name or path exists; the message lists the
            plugin folders that do.
    """
    path = Path(name_or_path)
    if not path.exists():
        folders = available()
        if str(name_or_path) not in folders:
            raise ValueError(
                f"plugin {str(name_or_path)!r} not found (neither a path nor a folder in "
                f"{[str(p) for p in search_path()]}); available: {', '.join(folders) or '(none)'}"
            )
        path = folders[str(name_or_path)]
    path = path.resolve()
    if path in _loaded:
        return _loaded[path]
    init = path / "__init__.py" if path.is_dir() else path
    if not init.is_file():
        raise ValueError(f"plugin {path} has no __init__.py")
    module_name = f"gmsearch_plugins.{path.stem if path.is_file() else path.name}"
    spec = importlib.util.spec_from_file_location(
        module_name, init, submodule_search_locations=[str(path)] if path.is_dir() else None
    )
    if spec is None or spec.loader is None:
        raise ValueError(f"plugin {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(module_name, None)
        raise
    _loaded[path] = module
    return module


#: The modules that register gmsearch's own plugins (``import gmsearch`` is lazy, so they load here).
BUILTIN_MODULES = (
    "gmsearch.attacks", "gmsearch.data", "gmsearch.nets.architectures", "gmsearch.search.fitness",
    "gmsearch.search.mutations", "gmsearch.search.pruners", "gmsearch.search.samplers", "gmsearch.training.gm_loss",
)


def load_builtins() -> None:
    """Import the modules that register the built-in plugins of every kind."""
    for name in BUILTIN_MODULES:
        importlib.import_module(name)


def load_plugins(names_or_paths: list[str] | tuple[str, ...] = ()) -> list[ModuleType]:
    """Load the built-ins and installed entry points, then each named plugin folder."""
    load_builtins()
    load_entry_points()
    return [load_plugin(p) for p in names_or_paths]


def table() -> list[tuple[str, str, str, str]]:
    """(kind, name, description, origin) of every registered plugin."""
    load_builtins()
    load_entry_points()
    rows = []
    for kind in sorted(REGISTRIES):
        for entry in REGISTRIES[kind].entries():
            rows.append((kind, entry.name, entry.description, entry.origin))
    return rows
