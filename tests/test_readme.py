"""Every Python block of the README runs as written (in order, one namespace), and its TOML block parses.

A fixture shrinks the work without editing the text: training stops after 1
epoch on the first 256 training images, each ``optimize`` call runs at most 4 trials, and searches get 1
generation. The blocks run in a temporary folder with their own cache.
"""

from __future__ import annotations

import re
import sys
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from gmsearch import config
from gmsearch.search import sampler as sampler_module
from gmsearch.training import loop

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.usefixtures("one_thread")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


@pytest.fixture
def shrunk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GMSEARCH_CACHE", str(tmp_path / "cache"))
    run_epochs = loop.run_epochs
    def one_short_epoch(net: Any, x: Any, y: Any, *, epochs: int, **kwargs: Any) -> Any:
        # the first 256 training images (a step's indices stay those of the full split: its cached gradients)
        return run_epochs(net, x[:256], y[:256], epochs=min(epochs, 1), **kwargs)

    monkeypatch.setattr(loop, "run_epochs", one_short_epoch)
    optimize = optuna.Study.optimize

    def few_trials(self: optuna.Study, func: Any, n_trials: int | None = None, **kwargs: Any) -> None:
        optimize(self, func, n_trials=min(n_trials or 4, 4), **kwargs)

    monkeypatch.setattr(optuna.Study, "optimize", few_trials)
    init = sampler_module.NicheEvolutionSampler.__init__

    def one_generation(self: Any, *args: Any, generations: int | None = None, **kwargs: Any) -> None:
        init(self, *args, generations=None if generations is None else 1, **kwargs)

    monkeypatch.setattr(sampler_module.NicheEvolutionSampler, "__init__", one_generation)
    yield


def test_readme_python_blocks_run_in_order(shrunk: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import gmsearch.pipeline  # noqa: F401  (every built-in registry and plugin exists before the snapshot)
    from gmsearch.registry import REGISTRIES

    # a registry created only while the blocks run would lose its built-in plugins in the clean-up below
    before = {kind: set(registry.names()) for kind, registry in REGISTRIES.items()}
    blocks = _blocks("python")
    assert len(blocks) >= 5, "the README's Python API, building blocks, plugins, workers and refine blocks"
    module = types.ModuleType("readme")  # classes defined in the blocks need a module (dataclasses look it up)
    monkeypatch.setitem(sys.modules, "readme", module)
    namespace: dict[str, Any] = module.__dict__
    try:
        for i, block in enumerate(blocks):
            try:
                exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"README python block {i + 1} failed: {exc!r}\n{block}") from exc
    finally:
        for kind, registry in REGISTRIES.items():  # the plugin block registers examples: take them back
            for name in set(registry.names()) - before.get(kind, set()):
                registry.unregister(name)
    assert namespace["study"].best_trial is not None and namespace["net"] is not None
    assert namespace["results"], "gms.refine returned the refined candidates"


def test_readme_toml_blocks_are_valid_configs() -> None:
    blocks = _blocks("toml")
    assert config.parse(tomllib.loads(blocks[0])) == config.parse({}), "the reference shows config.py's defaults"
    for block in blocks[1:]:
        config.parse(tomllib.loads(block))
