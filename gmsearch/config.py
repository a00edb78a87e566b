"""TOML run configuration: every value has a documented default taken from the paper.

Example ``study.toml``::

    seed = 0
    device = "auto"            # "auto", "cpu", "cuda", "cuda:1"
    workers = 1                # worker processes (gmsearch run), one device each round-robin
    workers_per_device = 0     # K workers on each device instead (0: off, `workers` decides)
    plugins = []               # plugin folders (names or paths) to load

    [data]
    name = "digits"            # any registered dataset: digits, mnist, cifar10, npz, ... or a .npz path
    reduced = false            # the paper's reduced protocol (1,000 / 100 images per class)
    val_fraction = 0.1
    image_size = 16            # resize to this size (digits are rendered at it); default: as loaded
    max_train_per_class = 150  # cap per class for quick runs; default: no cap
    options = {}               # extra loader arguments, e.g. { path = "data.npz" }

    [reference]
    name = "hand_a"            # architecture name, or a checkpoint path with `arch`
    epochs = 30

    [attack]
    name = "pgd_linf"
    params = {}                # overrides of the dataset's default budget (grey: eps 0.2; RGB: 8/255)

    [training]
    lam = 1.0                  # weight of the GM loss (eq. 2)
    loss = "cosine"            # GM variant (eq. 1)
    batch_size = 128           # paper
    lr = "default"             # Adam's PyTorch default (paper)
    cuda_graph = false         # CUDA only: replay each child's step as a CUDA graph (experimental)
    gm_batchnorm = "batch"     # the GM term's BatchNorm: batch | running | detached statistics
    references = []            # misalign against these too (architecture names, trained and cached like
                               # [reference]): the GM term is the mean over them and the reference (not the paper's)

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
    max_blocks = 20            # size budget of evolved genomes
    max_params = 0             # parameter budget (0: none)
    pruner = "nop"             # nop (paper: every child trains all epochs), niche, median, hyperband
    pruner_params = {}         # e.g. { warmup = 1, margin = 0.08 } for niche
    inherit = false            # children start from the parent's weights (not the paper's)
    inherit_epochs = 0.5       # ... and train this share of their epochs

    [study]
    name = "gmsearch"
    storage = "sqlite:///gmsearch.db"
    artifacts = ""             # trial weights; default: gmsearch_artifacts beside the SQLite file

Relative paths of a config file (``plugins`` given as paths, a SQLite or
journal ``storage``, the default ``sqlite:///gmsearch.db`` included, a
``.npz`` data ``name`` or ``options.path``, ``root``, a reference checkpoint,
``artifacts``, ``cache_dir``) are resolved from the config file's folder by
:func:`load` (as most tools do), so a run does not depend on the folder it is
started from and every error names the resolved path. :func:`parse` resolves
nothing (a mapping has no folder).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
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
    image_size: int | None = None
    max_train_per_class: int | None = None
    max_test_per_class: int | None = None
    num_classes: int | None = None
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
    cuda_graph: bool = False
    gm_batchnorm: str = "batch"
    references: list[str] = field(default_factory=list)


@dataclass
class FitnessConfig:
    name: str = "min_clean_adv"
    params: dict[str, Any] = field(default_factory=dict)
    last_epochs: int = 1


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
    max_params: int | None = None
    mutations: list[str] = field(default_factory=list)
    sampler: str = "niche"
    sampler_params: dict[str, Any] = field(default_factory=dict)
    pruner: str = "nop"
    pruner_params: dict[str, Any] = field(default_factory=dict)
    inherit: bool = False
    inherit_epochs: float = 0.5


@dataclass
class StudyConfig:
    name: str = "gmsearch"
    storage: str = "sqlite:///gmsearch.db"
    artifacts: str | None = None
    cache_dir: str | None = None


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    workers_per_device: int = 0
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


def section_names() -> tuple[str, ...]:
    """The config file's sections (``data``, ``reference``, ... ``study``)."""
    return tuple(_SECTION_TYPES)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """``cfg`` as the nested mapping :func:`parse` reads back (a deep copy)."""
    return dataclasses.asdict(cfg)


#: Lower bounds of numeric settings: (section, key, smallest allowed value).
_AT_LEAST: tuple[tuple[str, str, float], ...] = (
    ("top level", "workers", 1), ("top level", "workers_per_device", 0),
    ("data", "image_size", 4), ("data", "max_train_per_class", 1), ("data", "max_test_per_class", 1),
    ("data", "num_classes", 2),
    ("reference", "epochs", 1), ("fitness", "last_epochs", 1),
    ("training", "lam", 0.0), ("training", "batch_size", 2),
    ("search", "population_size", 1), ("search", "n_children", 1), ("search", "min_distance", 0.0),
    ("search", "generations", 1), ("search", "epochs", 1), ("search", "epochs_step", 0),
    ("search", "epochs_every", 1), ("search", "max_blocks", 2), ("search", "max_params", 0),
)


def _allowed(hint: Any) -> tuple[type, ...]:
    """The runtime types a field's annotation allows (``NoneType`` for optional ones)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(a for arg in typing.get_args(hint) for a in _allowed(arg))
    return (typing.get_origin(hint) or hint,)


def _check_value(where: str, key: str, value: Any, allowed: tuple[type, ...]) -> Any:
    if value is None and type(None) in allowed:  # TOML has no null; Python callers may pass None
        return None
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    wanted = " or ".join(dict.fromkeys(names.get(a, a.__name__) for a in allowed if a is not type(None)))
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"[{where}] {key} must be {wanted}, got {value!r}")
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value if int in allowed else float(value)
    if not isinstance(value, allowed):
        raise ConfigError(f"[{where}] {key} must be {wanted}, got {value!r}")
    return value


def _fill(cls: type[Any], values: dict[str, Any], where: str) -> Any:
    allowed = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in [{where}]; allowed: {sorted(allowed)}")
    hints = typing.get_type_hints(cls)
    obj = cls()
    for key, value in values.items():
        setattr(obj, key, _check_value(where, key, value, _allowed(hints[key])))
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
    for where, key, low in _AT_LEAST:
        section = cfg if where == "top level" else getattr(cfg, where)
        value = getattr(section, key)
        if value is not None and value < low:
            raise ConfigError(f"[{where}] {key} must be >= {low}, got {value}")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"[data] val_fraction must be in (0, 1), got {cfg.data.val_fraction}")
    k = cfg.search.mutations_per_child
    if len(k) != 2 or k[0] < 1 or k[1] < k[0]:
        raise ConfigError(f"[search] mutations_per_child must be [lo, hi] with 1 <= lo <= hi, got {k}")
    if isinstance(cfg.training.lr, str) and cfg.training.lr != "default":
        raise ConfigError(f"[training] lr must be a number or \"default\", got {cfg.training.lr!r}")
    if cfg.workers != 1 and cfg.workers_per_device > 0:
        raise ConfigError(
            f"workers = {cfg.workers} and workers_per_device = {cfg.workers_per_device}: set one of them "
            "(workers_per_device = K puts K workers on each device)"
        )
    if not cfg.study.name.strip() or cfg.study.name != cfg.study.name.strip():
        raise ConfigError(
            f"[study] name must be a non-empty name without leading or trailing spaces, got {cfg.study.name!r}"
        )
    if (bn := cfg.training.gm_batchnorm) not in ("batch", "running", "detached"):  # gm_loss.BATCHNORM_MODES
        raise ConfigError(f"[training] gm_batchnorm must be one of batch, running, detached, got {bn!r}")
    refs = cfg.training.references
    if not all(isinstance(r, str) and r for r in refs) or len(set(refs)) != len(refs):
        raise ConfigError(f"[training] references must be distinct architecture names, got {refs!r}")
    if cfg.device != "auto" and not cfg.device.startswith(("cpu", "cuda", "mps")):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda[:N]' or 'mps', got {cfg.device!r}")
    return cfg


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "~")) or "/" in value or "\\" in value


def _resolve(folder: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (folder / path).resolve())


def resolve_storage(folder: Path, url: str) -> str:
    """A SQLite or journal ``url`` whose file path is relative, made absolute from ``folder``."""
    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix):
            file = url[len(prefix):]
            if file and file != ":memory:" and not Path(file).is_absolute():
                return prefix + _resolve(folder, file)
    return url


def resolve_paths(cfg: RunConfig, folder: str | Path) -> RunConfig:
    """``cfg`` with the relative paths it names resolved from ``folder`` (a config file's folder), in place.

    Plugins are resolved when they look like paths (``./x``, ``a/b``) or
    exist in ``folder``; a bare name that does not stays a name (searched on
    the plugin path).
    """
    base = Path(folder).resolve()
    cfg.plugins = [
        _resolve(base, p) if _looks_like_path(p) or (base / p).exists() else p for p in cfg.plugins
    ]
    d = cfg.data
    if d.name.endswith(".npz"):
        d.name = _resolve(base, d.name)
    if isinstance(d.options.get("path"), str):
        d.options = {**d.options, "path": _resolve(base, d.options["path"])}
    if d.root:
        d.root = _resolve(base, d.root)
    if cfg.reference.name.endswith((".pt", ".pth")) or _looks_like_path(cfg.reference.name):
        cfg.reference.name = _resolve(base, cfg.reference.name)
    cfg.study.storage = resolve_storage(base, cfg.study.storage)
    if cfg.study.artifacts:
        cfg.study.artifacts = _resolve(base, cfg.study.artifacts)
    if cfg.study.cache_dir:
        cfg.study.cache_dir = _resolve(base, cfg.study.cache_dir)
    return cfg


def load(path: str | Path) -> RunConfig:
    """Read and validate a TOML config file; relative paths in it are resolved from its folder
    (:func:`resolve_paths`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        values = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    return resolve_paths(parse(values), p.parent)
