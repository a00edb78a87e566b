"""Relative paths of a config file resolve from its folder; an existing study is resumed only with its population."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.storages import RDBStorage

import gmsearch as gms
from gmsearch import config, pipeline
from gmsearch.errors import UsageError
from gmsearch.search.study import make_storage

CONFIG = """
plugins = ["./my_plugins", "plugin_by_name", "beside"]
[data]
name = "data/images.npz"
root = "~/datasets"
options = { path = "../shared/other.npz" }
[reference]
name = "weights/ref.pt"
arch = "hand_a"
[study]
storage = "sqlite:///studies/s.db"
artifacts = "out/artifacts"
cache_dir = "cache"
"""


def test_relative_paths_resolve_from_the_config_files_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "project" / "conf"
    folder.mkdir(parents=True)
    (folder / "beside").mkdir()  # a bare name that exists beside the config is a path
    (folder / "study.toml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    cfg = config.load("project/conf/study.toml")
    assert cfg.plugins == [str(folder / "my_plugins"), "plugin_by_name", str(folder / "beside")]
    assert cfg.data.name == str(folder / "data/images.npz")
    assert cfg.data.root == str(Path("~/datasets").expanduser())
    assert cfg.data.options == {"path": str(tmp_path / "project" / "shared" / "other.npz")}
    assert cfg.reference.name == str(folder / "weights/ref.pt")
    assert cfg.study.storage == f"sqlite:///{folder}/studies/s.db"
    assert cfg.study.artifacts == str(folder / "out/artifacts")
    assert cfg.study.cache_dir == str(folder / "cache")
    assert pipeline.artifact_dir(cfg) == folder / "out/artifacts"


def test_storage_urls_resolve_from_the_config_files_folder(tmp_path: Path) -> None:
    for storage, resolved in [
        (None, "sqlite:///{folder}/gmsearch.db"),  # the default too: beside the config file
        ("journal:runs/s.log", "journal:{folder}/runs/s.log"),
        ("sqlite:////abs/s.db", "sqlite:////abs/s.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql://u:p@host/db", "postgresql://u:p@host/db"),
    ]:
        (tmp_path / "study.toml").write_text(f'[study]\nstorage = "{storage}"\n' if storage else "")
        assert config.load(tmp_path / "study.toml").study.storage == resolved.format(folder=tmp_path), storage
    assert config.parse({}).study.storage == "sqlite:///gmsearch.db"  # a mapping has no folder: as given


def test_an_existing_study_is_resumed_only_with_its_population(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/s.db"
    sampler = gms.NicheEvolutionSampler(population_size=3, n_children=2, seed=0)
    rdb = make_storage(storage, heartbeat_interval=None)
    assert isinstance(rdb, RDBStorage)
    gms.create_study(study_name="s", storage=rdb, sampler=sampler).ask()
    rdb.engine.dispose()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]
    same = config.parse({"search": {"population_size": 3, "n_children": 2, "generations": 7},
                         "study": {"name": "s", "storage": storage}})
    pipeline.check_resume(same)  # more generations: fine
    pipeline.check_resume(config.parse({"search": {"n_children": 1}, "study": {"name": "new", "storage": storage}}))
    other = config.parse({"search": {"population_size": 3, "n_children": 1},
                          "study": {"name": "s", "storage": storage}})
    with pytest.raises(UsageError, match=r"study 's' in sqlite:///.* was created with population_size = 3, "
                                         r"n_children = 2; this config has population_size = 3, n_children = 1: "
                                         r"resume it with the same \[search\] settings, or start a new study"):
        pipeline.check_resume(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"], "nothing left behind (no -wal or -shm file)"
