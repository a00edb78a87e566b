"""Fitness plugins, the content-addressed cache, and config validation."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest
import torch

from gmsearch import cache, config
from gmsearch.search import fitness


def test_fitness_plugins() -> None:
    assert fitness.get("min_clean_adv")(0.9, 0.4) == 0.4
    assert fitness.get("mean")(0.9, 0.4) == pytest.approx(0.65)
    assert fitness.create("weighted", weight=0.75)(0.8, 0.4) == pytest.approx(0.7)
    assert fitness.get("pareto")(0.9, 0.4) == (0.9, 0.4)
    assert fitness.n_objectives(fitness.get("pareto")) == 2
    assert fitness.n_objectives(fitness.create("weighted", weight=0.2)) == 1
    with pytest.raises(ValueError, match="weight must be in"):
        fitness.create("weighted", weight=2.0)(0.5, 0.5)


def test_cache_roundtrip_and_integrity(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "x.pt"
    meta = {"what": "test", "n": 3}
    calls = {"n": 0}

    def compute() -> dict[str, torch.Tensor]:
        calls["n"] += 1
        return {"a": torch.arange(6.0).reshape(2, 3)}

    first = cache.cached_tensors(path, meta, compute)
    second = cache.cached_tensors(path, meta, compute)
    assert calls["n"] == 1 and torch.equal(first["a"], second["a"])

    # mismatched inputs: regenerated, not used
    cache.cached_tensors(path, {"what": "test", "n": 4}, compute)
    assert calls["n"] == 2

    # corruption: flip bytes in the middle of the file
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 16] = b"\x00" * 16
    path.write_bytes(bytes(raw))
    with pytest.raises(cache.CacheError):
        cache.load_tensors(path, {"what": "test", "n": 4})
    with caplog.at_level(logging.WARNING):
        again = cache.cached_tensors(path, {"what": "test", "n": 4}, compute, what="unit test")
    assert calls["n"] == 3 and torch.equal(again["a"], first["a"])
    assert "unit test" in caplog.text and str(path) in caplog.text

    # not plain tensors: refused by weights_only loading
    torch.save({"format": 1, "tensors": datetime.date(2020, 1, 1)}, path)
    with pytest.raises(cache.CacheError, match="not plain tensors|does not hold"):
        cache.load_tensors(path)


def test_content_hash_is_stable_and_sensitive() -> None:
    t = torch.ones(3)
    assert cache.content_hash({"a": 1, "t": t}) == cache.content_hash({"t": t.clone(), "a": 1})
    assert cache.content_hash({"a": 1, "t": t}) != cache.content_hash({"a": 1, "t": t * 2})
    assert cache.tensor_digest(torch.zeros(2, 3)) != cache.tensor_digest(torch.zeros(3, 2))


def test_config_defaults_and_validation(tmp_path: Path) -> None:
    cfg = config.parse({})
    assert cfg.search.population_size == 4 and cfg.search.generations == 50 and cfg.search.epochs == 20
    assert cfg.training.batch_size == 128 and cfg.learning_rate is None
    good = tmp_path / "c.toml"
    good.write_text(
        'seed = 3\n[data]\nname = "digits"\n[attack]\nname = "fgsm"\nparams = { eps = 0.1 }\n'
        "[search]\npopulation_size = 5\nmutations_per_child = [4, 5]\n"
    )
    cfg = config.load(good)
    assert cfg.seed == 3 and cfg.attack.params == {"eps": 0.1} and cfg.search.population_size == 5
    with pytest.raises(config.ConfigError, match=r"unknown key\(s\) \['popsize'\] in \[search\]; allowed"):
        config.parse({"search": {"popsize": 3}})
    with pytest.raises(config.ConfigError, match="must be an integer"):
        config.parse({"search": {"population_size": 2.5}})
    with pytest.raises(config.ConfigError, match="mutations_per_child"):
        config.parse({"search": {"mutations_per_child": [5, 4]}})
    with pytest.raises(config.ConfigError, match="device must be"):
        config.parse({"device": "tpu"})
    assert cfg.workers == 1 and cfg.workers_per_device == 0
    assert config.parse({"workers_per_device": 3}).workers_per_device == 3
    with pytest.raises(config.ConfigError, match=r"\[top level\] workers_per_device must be >= 0, got -1"):
        config.parse({"workers_per_device": -1})
    with pytest.raises(config.ConfigError, match="workers_per_device must be an integer"):
        config.parse({"workers_per_device": 1.5})
    with pytest.raises(config.ConfigError, match="workers = 4 and workers_per_device = 2: set one of them"):
        config.parse({"workers": 4, "workers_per_device": 2})
    bad = tmp_path / "bad.toml"
    bad.write_text("[search\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(bad)
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.toml")
