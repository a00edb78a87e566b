"""The generic registry and plugin discovery (entry points and plugin folders)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gmsearch as gms
from gmsearch import plugins, registry
from gmsearch.registry import Registry, UnknownPluginError

REPO = Path(__file__).resolve().parents[1]


def test_registry_verbs_and_errors() -> None:
    reg: Registry[object] = Registry("widget_test")

    @reg.register("b")
    class B:
        """A b widget."""

        def __init__(self, size: int = 1) -> None:
            self.size = size

    @reg.register("a")
    def a() -> str:
        """An a widget."""
        return "a"

    assert reg.names() == ["a", "b"]
    assert reg.get("a") is a
    assert reg.create("b", size=3).size == 3
    assert [e.description for e in reg.entries()] == ["An a widget.", "A b widget."]
    with pytest.raises(UnknownPluginError, match=r"unknown widget_test 'c'; available: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: None)
    reg.register("a", replace=True)(B)
    assert reg.get("a") is B
    assert "widget_test" in registry.REGISTRIES


def test_every_plugin_kind_shares_the_registry_type() -> None:
    for module in (gms.attacks, gms.fitness, gms.losses, gms.mutations, gms.datasets, gms.architectures):
        reg = module.registry
        assert isinstance(reg, Registry)
        assert callable(module.register)
        assert module.names() == reg.names()
    with pytest.raises(KeyError, match="available: .*min_clean_adv"):
        gms.fitness.get("nope")


def test_discovery_from_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "fakeplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[gmsearch.plugins]\nfake = fakeplug_mod\n")
    (tmp_path / "fakeplug_mod.py").write_text(
        textwrap.dedent(
            '''
            import gmsearch as gms

            @gms.fitness.register("from_entry_point")
            def from_entry_point(clean_acc: float, adv_acc: float) -> float:
                """Registered by an installed package."""
                return clean_acc * adv_acc
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    try:
        # an unknown name triggers discovery once, then resolves
        fn = gms.fitness.get("from_entry_point")
        assert fn(0.5, 0.5) == 0.25
        rows = {name: origin for _, name, _, origin in plugins.table()}
        assert rows["from_entry_point"] == "fakeplug_mod"
    finally:
        gms.fitness.registry.unregister("from_entry_point")


def test_plugin_folder_by_path_and_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "myplugins" / "double_fit"
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("# double_fit\n")
    (folder / "__init__.py").write_text(
        textwrap.dedent(
            '''
            import gmsearch as gms

            @gms.fitness.register("double_min")
            def double_min(clean_acc: float, adv_acc: float) -> float:
                """Twice the minimum."""
                return 2 * min(clean_acc, adv_acc)
            '''
        )
    )
    try:
        module = gms.load_plugin(folder)
        assert gms.fitness.get("double_min")(0.4, 0.9) == pytest.approx(0.8)
        assert gms.load_plugin(folder) is module  # loading twice is harmless
        gms.fitness.registry.unregister("double_min")
        plugins._loaded.clear()
        monkeypatch.setenv("GMSEARCH_PLUGIN_PATH", str(tmp_path / "myplugins"))
        assert "double_fit" in plugins.available()
        gms.load_plugin("double_fit")
        assert "double_min" in gms.fitness.names()
    finally:
        gms.fitness.registry.unregister("double_min")
        plugins._loaded.clear()
    with pytest.raises(ValueError, match="not found.*available"):
        gms.load_plugin("no_such_plugin")


def test_cli_lists_plugins_of_every_kind() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gmsearch.cli", "plugins"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    for kind in ("attack:", "fitness:", "loss:", "mutation:", "dataset:", "architecture:"):
        assert kind in out
    assert "min_clean_adv" in out and "paper eq. 4" in out
    assert "pgd_linf" in out and "add_conv" in out and "[builtin]" in out
