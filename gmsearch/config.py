"""TOML run configuration: every value has a documented default taken from the paper.

Example ``study.toml``::

    seed = 0
    device = "auto"            # "auto", "cpu", "cuda", "cuda:1"
    plugins = []               # plugin folders (names or paths) to load

    [data]
    name = "digits"            # any registered dataset: digits, mnist, cifar10, npz, ...
    reduced = false            # the paper's reduced protocol (1,000 / 100 images per class)
    val_fraction = 0.1
    options = {}               # extra loader arguments, e.g. { path = "data.npz" }

    [reference]
    name = "hand_a"            # architecture name, or a checkpoint path with `arch`
    epochs = 30

    [attack]
    name = "pgd_linf"
    params = { eps = 0.2, alpha = 0.05, steps = 10 }

    [training]
    lam = 1.0                  # weight of the GM loss (eq. 2)
    loss = "cosine"            # GM variant (eq. 1)
    batch_size = 128           # paper
    lr = "default"             # Adam's PyTorch default (paper)

    [fitness]
    name = "min_clean_adv"     # eq. 4

    [search]
    population_size = 4        # paper: 4-5
    n_children = 2             # paper: 2
    min_distance = 4.0         # paper: 4
    mutations_per_child = [4, 5]
    generations = 50           # paper: 50
    epochs = 20                # paper: 20 ...
    epochs_step = 5            # ... +5 ...
    epochs_every = 10          # ... every 10 generations
    max_blocks = 20
    pruner = "nop"             # nop (paper: every child trains all epochs), niche, median, hyperband
    pruner_params = {}         # e.g. { warmup = 2, margin = 0.1 } for niche

    [study]
    name = "gmsearch"
    storage = "sqlite:///gmsearch.db"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file that cannot be used."""


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    reduced: bool = False
    val_fraction: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReferenceConfig:
    name: str = "hand_a"
    arch: str | None = None
    epochs: int = 30


@dataclass
class AttackConfig:
    name: str = "pgd_linf"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingConfig:
    lam: float = 1.0
    loss: str = "cosine"
    batch_size: int = 128
    lr: float | str = "default"


@dataclass
class FitnessConfig:
    name: str = "min_clean_adv"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchConfig:
    population_size: int = 4
    n_children: int = 2
    min_distance: float = 4.0
    mutations_per_child: list[int] = field(default_factory=lambda: [4, 5])
    generations: int = 50
    epochs: int = 20
    epochs_step: int = 5
    epochs_every: int = 10
    max_blocks: int = 20
    mutations: list[str] = field(default_factory=list)
    pruner: str = "nop"
    pruner_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyConfig:
    name: str = "gmsearch"
    storage: str = "sqlite:///gmsearch.db"
    artifacts: str = "gmsearch_artifacts"
    cache_dir: str | None = None


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    plugins: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    fitness: FitnessConfig = field(default_factory=FitnessConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    study: StudyConfig = field(default_factory=StudyConfig)

    @property
    def torch_device(self) -> str | None:
        return None if self.device == "auto" else self.device

    @property
    def learning_rate(self) -> float | None:
        return None if self.training.lr == "default" else float(self.training.lr)


_SECTION_TYPES: dict[str, type[Any]] = {
    "data": DataConfig, "reference": ReferenceConfig, "attack": AttackConfig,
    "training": TrainingConfig, "fitness": FitnessConfig, "search": SearchConfig, "study": StudyConfig,
}


def _fill(cls: type[Any], values: dict[str, Any], where: str) -> Any:
    allowed = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in [{where}]; allowed: {sorted(allowed)}")
    obj = cls()
    for key, value in values.items():
        default = getattr(obj, key)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"[{where}] {key} must be true or false, got {value!r}")
        if isinstance(default, int | float) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int | float):
                if not (key == "lr" and value == "default"):
                    raise ConfigError(f"[{where}] {key} must be a number, got {value!r}")
            if isinstance(default, int) and isinstance(value, float) and key != "lr":
                raise ConfigError(f"[{where}] {key} must be an integer, got {value!r}")
        if isinstance(default, dict) and not isinstance(value, dict):
            raise ConfigError(f"[{where}] {key} must be a table, got {value!r}")
        if isinstance(default, list) and not isinstance(value, list):
            raise ConfigError(f"[{where}] {key} must be a list, got {value!r}")
        setattr(obj, key, value)
    return obj


def parse(values: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from a parsed TOML mapping, validated."""
    cfg: RunConfig = _fill(
        RunConfig, {k: v for k, v in values.items() if k not in _SECTION_TYPES}, "top level"
    )
    for name, cls in _SECTION_TYPES.items():
        if name in values:
            if not isinstance(values[name], dict):
                raise ConfigError(f"[{name}] must be a table")
            setattr(cfg, name, _fill(cls, values[name], name))
    if cfg.workers < 1:
        raise ConfigError(f"workers must be >= 1, got {cfg.workers}")
    k = cfg.search.mutations_per_child
    if len(k) != 2 or k[0] < 1 or k[1] < k[0]:
        raise ConfigError(f"[search] mutations_per_child must be [lo, hi] with 1 <= lo <= hi, got {k}")
    if cfg.device != "auto" and not cfg.device.startswith(("cpu", "cuda", "mps")):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda[:N]' or 'mps', got {cfg.device!r}")
    return cfg


def load(path: str | Path) -> RunConfig:
    """Read and validate a TOML config file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        values = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    return parse(values)
