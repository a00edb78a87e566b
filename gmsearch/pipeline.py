"""The one assembler: settings (a :class:`~gmsearch.config.RunConfig`) -> data, reference, attack,
objective, sampler and study.

``gmsearch run``, ``gmsearch quickstart`` and the paper scripts all build their
search here, so a default lives in one place (:mod:`gmsearch.config`) and every
path applies the same rules: the attack budget of the dataset's kind (grey or
colour, :func:`gmsearch.attacks.default_budget`) under the configured
overrides, the paper's epoch schedule, the size budget, and the study records
what it was run with (data shape, resolved attack, artifact folder).

Cheap checks come first (:func:`check`): plugin names, device, storage and
folders are validated before any data is loaded or network trained.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from gmsearch import attacks, cache, interrupt
from gmsearch import data as datasets
from gmsearch.config import RunConfig
from gmsearch.errors import EnvironmentProblem, UsageError
from gmsearch.nets import architectures, references, zoo
from gmsearch.plugins import load_plugins
from gmsearch.search import fitness, mutations, prior, pruners, samplers, schema
from gmsearch.search.objective import GMObjective
from gmsearch.search.samplers import EpochSchedule, GenomeSampler, n_trials_for
from gmsearch.search.study import check_storage, create_study, make_storage, mask_url
from gmsearch.training import gm_loss

logger = logging.getLogger(__name__)


def devices(cfg: RunConfig) -> list[str]:
    """The devices workers run on, in round-robin order.

    An explicit device (``cpu``, ``cuda:1``, ``mps``) is the only one; ``cuda``
    and ``auto`` mean every GPU (``cuda:0`` .. ``cuda:{n-1}``) when CUDA is
    available; otherwise ``auto`` is the CPU (and ``cuda`` stays ``cuda``, which
    :func:`check_device` rejects on a machine without a GPU).
    """
    if cfg.device not in ("auto", "cuda"):
        return [cfg.device]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count > 0:
        return [f"cuda:{i}" for i in range(count)]
    return ["cpu"] if cfg.device == "auto" else [cfg.device]


def device_for(cfg: RunConfig, worker: int = 0) -> str:
    """The device of worker ``worker``: :func:`devices` round-robin."""
    available = devices(cfg)
    return available[worker % len(available)]


def worker_count(cfg: RunConfig, workers: int | None = None) -> int:
    """How many worker processes run: ``workers`` when given, else ``workers_per_device`` on each of
    :func:`devices` when set, else ``cfg.workers``."""
    if workers is not None:
        return workers
    if cfg.workers_per_device > 0:
        return cfg.workers_per_device * len(devices(cfg))
    return cfg.workers


def describe_workers(cfg: RunConfig, workers: int | None = None) -> str:
    """The plan's workers line, e.g. ``6 (3 per device on cuda:0, cuda:1)``."""
    n = worker_count(cfg, workers)
    if workers is None and cfg.workers_per_device > 0:
        return f"{n} ({cfg.workers_per_device} per device on {', '.join(devices(cfg))})"
    if n == 1:
        return "1 (this process)"
    used = dict.fromkeys(device_for(cfg, i) for i in range(n))
    return f"{n} (round-robin on {', '.join(used)})"


def artifact_dir(cfg: RunConfig) -> Path:
    """Where trial weights go: ``[study] artifacts``, else ``gmsearch_artifacts`` beside the SQLite file."""
    if cfg.study.artifacts:
        return Path(cfg.study.artifacts)
    return schema.default_artifact_dir(cfg.study.storage)


def cache_dir(cfg: RunConfig) -> Path:
    """Cache of reference weights, adversarial sets and reference gradients."""
    return Path(cfg.study.cache_dir) if cfg.study.cache_dir else cache.default_cache_dir()


def check_device(device: str) -> None:
    """Fail fast on a device this machine does not have."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EnvironmentProblem(f"device {device!r}: no CUDA GPU is available here; use \"cpu\" or \"auto\"")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise EnvironmentProblem(
                f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0..cuda:"
                f"{torch.cuda.device_count() - 1}"
            )
    elif device == "mps" and not torch.backends.mps.is_available():
        raise EnvironmentProblem("device 'mps': Apple's MPS backend is not available here; use \"cpu\" or \"auto\"")


def check(cfg: RunConfig) -> None:
    """The cheap checks, before any data is loaded or network trained; nothing is written.

    Plugins load and every named plugin exists, takes its parameters and
    (fitness) returns a finite value; the device exists; the storage URL works
    (an existing SQLite file is sound, a server answers) and an existing study
    of that name has this population (:func:`check_resume`); data files and a
    reference checkpoint exist; the artifact and cache folders are folders that
    exist or can be created (:func:`check_folder`).
    """
    load_plugins(cfg.plugins)
    check_attack(cfg)
    fitness.check(cfg.fitness.name, cfg.fitness.params)  # exists, takes its params, returns a finite value
    gm_loss.get(cfg.training.loss)
    for name in cfg.search.mutations:
        mutations.get(name)
    pruners.create(cfg.search.pruner, **cfg.search.pruner_params)  # unknown name or bad parameter: one line
    samplers.create(cfg.search.sampler, **sampler_params(cfg))  # unknown name or bad parameter: one line
    if cfg.data.name not in datasets.names() and not cfg.data.name.endswith(".npz"):
        datasets.get(cfg.data.name)  # the error lists the registered datasets
    if cfg.data.name.endswith(".npz") and not Path(cfg.data.name).is_file():
        raise UsageError(f"[data] name {cfg.data.name!r}: no such .npz file")
    npz = cfg.data.options.get("path")
    if isinstance(npz, str) and not Path(npz).is_file():
        raise UsageError(f"[data] options.path {npz!r}: no such file")
    ref = cfg.reference
    if ref.name.endswith((".pt", ".pth")) or "/" in ref.name:
        if not Path(ref.name).is_file():
            raise UsageError(f"[reference] name {ref.name!r}: no such checkpoint file (or name an architecture)")
        if ref.arch is None:
            raise UsageError(f"[reference] a checkpoint ({ref.name!r}) needs arch = one of {architectures.names()}")
        architectures.get(ref.arch)
    else:
        architectures.get(ref.name)
    for name in cfg.training.references:
        if name not in architectures.names():
            raise UsageError(f"[training] references: unknown architecture {name!r}; "
                             f"choose from {', '.join(architectures.names())}")
    check_device(device_for(cfg))
    check_storage(cfg.study.storage)
    check_folder("[study] artifacts", artifact_dir(cfg))
    check_folder("[study] cache_dir", cache_dir(cfg))
    check_resume(cfg)


def check_folder(what: str, folder: Path) -> None:
    """``folder`` is a folder this process can write in, or can be created: one line naming ``what`` and the
    resolved path otherwise (exit status 2); nothing is created."""
    folder = folder.expanduser().absolute()
    problem = None
    if folder.exists():
        if not folder.is_dir():
            problem = "is a file; it must be a folder (or not exist yet)"
        elif not os.access(folder, os.W_OK | os.X_OK):
            problem = "is not writable by this user"
    else:
        parent = next(p for p in folder.parents if p.exists())  # "/" exists
        if not parent.is_dir():
            problem = f"cannot be created: {str(parent)!r} is a file"
        elif not os.access(parent, os.W_OK | os.X_OK):
            problem = f"cannot be created: {str(parent)!r} is not writable by this user"
    if problem is not None:
        raise UsageError(f"{what} {str(folder)!r} {problem}")


def check_resume(cfg: RunConfig) -> None:
    """An existing study named ``[study] name`` in the storage must have been created with this ``sampler``,
    ``population_size`` and ``n_children`` (else one population would mix two searches); nothing is written."""
    url = cfg.study.storage
    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix) and not Path(url[len(prefix):] or ":memory:").is_file():
            return  # no file: no study yet (and opening it would create one)
    storage = make_storage(url, heartbeat_interval=None)
    assert storage is not None  # a URL always makes one
    try:
        try:
            study_id = storage.get_study_id_from_name(cfg.study.name)
        except KeyError:
            return  # a new study
        stored = storage.get_study_system_attrs(study_id).get(schema.SAMPLER_KEY) or {}
    finally:
        if isinstance(storage, optuna.storages.RDBStorage):
            storage.engine.dispose()  # no connection (nor SQLite -wal file) left behind
    s = cfg.search
    way = stored.get("sampler", "niche") if stored else s.sampler  # studies from before sampler plugins: niche
    if way != s.sampler:
        raise UsageError(
            f"study {cfg.study.name!r} in {mask_url(url)} was created with sampler = {way!r}; this config has "
            f"sampler = {s.sampler!r}: resume it with the same [search] sampler, or start a new study with another "
            "[study] name (or storage)"
        )
    differs = [k for k in ("population_size", "n_children") if k in stored and stored[k] != getattr(s, k)]
    if differs:
        was = ", ".join(f"{k} = {stored[k]}" for k in ("population_size", "n_children") if k in stored)
        now = ", ".join(f"{k} = {getattr(s, k)}" for k in ("population_size", "n_children"))
        raise UsageError(
            f"study {cfg.study.name!r} in {mask_url(url)} was created with {was}; this config has {now}: resume it "
            "with the same [search] settings, or start a new study with another [study] name (or storage)"
        )


def check_attack(cfg: RunConfig, input_shape: tuple[int, int, int] | None = None) -> None:
    """``[attack]`` can be built: the name exists, the params are its own and in range (an L-inf ``eps < 1``;
    with ``input_shape``, an L2 ``eps`` below the images' diameter); one line naming ``[attack]``."""
    name = cfg.attack.name
    try:
        if input_shape is None:  # before the data: any kind's default budget under the overrides
            attack = attacks.create(name, **{**attacks.default_budget(name, in_channels=1), **cfg.attack.params})
        else:
            attack = attacks.create(name, **attack_params(cfg, input_shape))
            attack.check_budget(input_shape)
    except (TypeError, ValueError) as exc:  # a parameter it does not take, or out of range (names the attack)
        raise UsageError(f"[attack] {exc}") from None


def load_data(cfg: RunConfig, *, device: str | torch.device | None = None) -> datasets.Dataset:
    """The configured dataset: loaded (a ``.npz`` path goes to the ``npz`` loader), capped per class, resized."""
    d = cfg.data
    name, options = d.name, dict(d.options)
    if name.endswith(".npz"):
        name, options["path"] = "npz", options.get("path", d.name)
    if name == "digits" and d.image_size is not None:
        options.setdefault("image_size", d.image_size)  # rendered at the size, not resized
    data = datasets.load(
        name, root=d.root, reduced=d.reduced, val_fraction=d.val_fraction, seed=cfg.seed,
        num_classes=d.num_classes, **options,
    )
    data = datasets.limit_per_class(data, train=d.max_train_per_class, test=d.max_test_per_class, seed=cfg.seed)
    if d.image_size is not None and data.input_shape[1:] != (d.image_size, d.image_size):
        data = datasets.resize_dataset(data, d.image_size)
    return data.to(device) if device is not None else data


def attack_params(
    cfg: RunConfig, input_shape: tuple[int, int, int], *, name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An attack's full parameters: the default budget of the images' kind and size under the overrides.

    The one budget resolver (``gmsearch run``, the quickstart and the paper
    scripts). ``name`` defaults to ``[attack] name``; ``overrides`` default to
    ``[attack] params`` for the configured attack and to none for another.
    """
    name = cfg.attack.name if name is None else name
    if overrides is None:
        overrides = cfg.attack.params if name == cfg.attack.name else {}
    c, h, w = input_shape
    defaults = attacks.default_budget(name, in_channels=c, image_size=(h, w))
    return attacks.create(name, **{**defaults, **overrides}).params()


def make_reference(
    cfg: RunConfig, data: datasets.Dataset, *, device: str | torch.device | None = None,
    echo: Callable[[str], None] | None = None,
) -> Any:
    """The frozen reference (trained once and cached, or loaded from a checkpoint); ``echo`` shows its epochs."""
    return references.get(
        cfg.reference.name, data, arch=cfg.reference.arch, epochs=cfg.reference.epochs, seed=cfg.seed,
        device=device, cache_dir=cache_dir(cfg), progress=echo,
    )


def gm_references(cfg: RunConfig, data: datasets.Dataset, *, device: str | torch.device | None = None,
                  echo: Callable[[str], None] | None = None) -> list[Any]:
    """The networks of ``[training] references`` other than the reference, each trained once and cached as the
    reference is (same epochs and seed): the GM term misaligns against them too."""
    return [
        references.get(name, data, epochs=cfg.reference.epochs, seed=cfg.seed, device=device,
                       cache_dir=cache_dir(cfg), progress=echo)
        for name in cfg.training.references if name != cfg.reference.name
    ]


def plan(cfg: RunConfig, data: datasets.Dataset, device: str, *, workers: int | None = None) -> list[str]:
    """What a run will do, in a few lines (printed before any training); ``workers`` as for :func:`worker_count`."""
    s, ref = cfg.search, cfg.reference
    c, h, w = data.input_shape
    if ref.arch is not None:
        reference = f"{ref.arch} from checkpoint {ref.name}"
    else:
        file = references.cached_file(ref.name, data, epochs=ref.epochs, seed=cfg.seed, cache_dir=cache_dir(cfg))
        state = f"cached in {file}" if file is not None else "not cached: it trains now"
        reference = f"{ref.name}, {ref.epochs} epochs ({state})"
    extra = [name for name in cfg.training.references if name != ref.name]
    if extra:
        reference += f"; GM also against {', '.join(extra)} (trained and cached alike)"
    attack = attacks.create(cfg.attack.name, **attack_params(cfg, data.input_shape)).describe()
    last = EpochSchedule(base=s.epochs, step=s.epochs_step, every=s.epochs_every).epochs(s.generations)
    schedule = f"{_count(s.epochs, 'epoch')} per child" + (  # the note only when some generation trains more
        f" (+{s.epochs_step} every {s.epochs_every} generations: {last} in generation {s.generations})"
        if last > s.epochs else ""
    )
    caps = [f"at most {n} {split} images per class" for split, n in (("train", cfg.data.max_train_per_class),
                                                                       ("test", cfg.data.max_test_per_class)) if n]
    rows = [
        ("data", f"{cfg.data.name}{' (' + ', '.join(caps) + ')' if caps else ''}: train {len(data.train)} / "
                 f"val {len(data.val)} / test {len(data.test)}, images {c}x{h}x{w}, {data.num_classes} classes"),
        ("reference", reference),
        ("attack", f"{attack} (transferred from the reference)"),
        ("search", f"{s.sampler}: population {s.population_size} x {_count(s.n_children, 'child', 'children')}, "
                   f"{_count(s.generations, 'generation')} "
                   f"({n_trials_for(s.generations, s.population_size, s.n_children)} trials), {schedule}, "
                   f"lam {cfg.training.lam}, fitness {cfg.fitness.name}, pruner {cfg.search.pruner}"),
        ("storage", f"{mask_url(cfg.study.storage)} (study {cfg.study.name!r})"),
        ("artifacts", str(artifact_dir(cfg))),
        ("device", device),
        ("workers", describe_workers(cfg, workers)),
    ]
    return [f"  {k:<10} {v}" for k, v in rows]


def _count(n: int, one: str, many: str | None = None) -> str:
    """``1 generation``, ``3 generations``."""
    return f"{n} {one if n == 1 else many or one + 's'}"


def make_objective(
    cfg: RunConfig, data: datasets.Dataset, reference: torch.nn.Module, *, device: str | torch.device | None = None
) -> GMObjective:
    """The GM objective with the resolved attack (adversarial sets and reference gradients cached), misaligning
    against the reference and ``[training] references``."""
    return GMObjective(
        data, reference=reference, references=gm_references(cfg, data, device=device),
        attack=cfg.attack.name, attack_params=attack_params(cfg, data.input_shape),
        lam=cfg.training.lam, loss=cfg.training.loss, fitness=cfg.fitness.name, fitness_params=cfg.fitness.params,
        fitness_epochs=cfg.fitness.last_epochs, epochs=cfg.search.epochs, batch_size=cfg.training.batch_size,
        lr=cfg.learning_rate, device=device,
        cache_dir=cache_dir(cfg), seed=cfg.seed, artifact_store=artifact_dir(cfg),
        inherit=cfg.search.inherit, inherit_epochs=cfg.search.inherit_epochs, cuda_graph=cfg.training.cuda_graph,
        gm_batchnorm=cfg.training.gm_batchnorm,
    )


#: The sampler arguments :func:`make_sampler` takes from other settings (not from ``sampler_params``).
_SET_BY_SEARCH = {
    "population_size": "[search] population_size", "n_children": "[search] n_children",
    "min_distance": "[search] min_distance", "mutations_per_child": "[search] mutations_per_child",
    "generations": "[search] generations", "epoch_schedule": "[search] epochs", "mutation_names": "[search] mutations",
    "seed": "the top-level seed", "budget": "[search] max_blocks",
}


def sampler_params(cfg: RunConfig) -> dict[str, Any]:
    """``[search] sampler_params``, and for ``restarts`` the reference's architecture as the default genome.

    Raises:
        UsageError: ``restarts`` without a genome and with a reference that is not a zoo genome; a param that
            another setting gives the sampler (``population_size``: ``[search] population_size``).
    """
    params = dict(cfg.search.sampler_params)
    clash = sorted(set(params) & set(_SET_BY_SEARCH))
    if clash:
        where = _SET_BY_SEARCH[clash[0]]
        hint = f" (in a compare way spec: search.{where.split()[-1]}=...)" if where.startswith("[search]") else ""
        raise UsageError(f"[search] sampler_params: {clash[0]} is set by {where}; set it there{hint}")
    if cfg.search.sampler == "restarts" and "genome" not in params:
        if cfg.reference.name not in zoo.names():
            raise UsageError(
                f"[search] sampler \"restarts\": the reference {cfg.reference.name!r} is not a zoo genome "
                f"({', '.join(zoo.names())}); set [search] sampler_params.genome to genome JSON or a zoo name"
            )
        params["genome"] = cfg.reference.name
    return params


def make_sampler(cfg: RunConfig, data: datasets.Dataset) -> GenomeSampler:
    """The configured way (``[search] sampler``, default Algorithm 1) with the configured population, epoch
    schedule and size budget."""
    s = cfg.search
    channels, height, _ = data.input_shape
    budget = mutations.SizeBudget(
        max_blocks=s.max_blocks, max_params=s.max_params or None, in_channels=channels,
        num_classes=data.num_classes, image_size=height,
    )
    try:  # can Algorithm 1's first line be met? (cheap: genomes, no training)
        prior.initial_population(s.population_size, s.min_distance, random.Random(cfg.seed), budget=budget)
    except ValueError as exc:
        raise UsageError(f"[search] min_distance {s.min_distance} for {s.population_size} candidates: {exc}") from None
    return samplers.create(
        s.sampler, population_size=s.population_size, n_children=s.n_children, min_distance=s.min_distance,
        mutations_per_child=(s.mutations_per_child[0], s.mutations_per_child[1]), generations=s.generations,
        epoch_schedule=EpochSchedule(base=s.epochs, step=s.epochs_step, every=s.epochs_every),
        mutation_names=s.mutations or None, seed=cfg.seed, budget=budget, **sampler_params(cfg),
    )


def make_study(cfg: RunConfig, sampler: GenomeSampler, objective: GMObjective) -> optuna.Study:
    """Create or resume the study and record on it what rebuilds its networks and how it attacks."""
    two = objective.n_objectives > 1
    study = create_study(
        study_name=cfg.study.name, storage=cfg.study.storage, sampler=sampler,
        pruner=pruners.create(cfg.search.pruner, **cfg.search.pruner_params),
        directions=["maximize", "maximize"] if two else None,
    )
    schema.record_data(study, objective.data)
    schema.record_attack(study, objective.attack.name, objective.attack.params())
    schema.record_artifact_dir(study, artifact_dir(cfg))
    recorded = dataclasses.asdict(cfg)
    recorded["study"]["storage"] = mask_url(cfg.study.storage)  # no password in the database
    schema.record_config(study, recorded)
    return study


@dataclass
class Pipeline:
    """Everything one worker needs to run the configured search."""

    cfg: RunConfig
    device: str
    data: datasets.Dataset
    reference: torch.nn.Module
    objective: GMObjective
    sampler: GenomeSampler
    study: optuna.Study

    @property
    def n_trials(self) -> int:
        """Trials of the configured generations: the initial population plus ``g * s * n`` children."""
        s = self.cfg.search
        return n_trials_for(s.generations, s.population_size, s.n_children)


def assemble(
    cfg: RunConfig, *, worker: int = 0, echo: Callable[[str], None] | None = None, workers: int | None = None
) -> Pipeline:
    """Build the configured search for worker ``worker`` (data, reference, objective, sampler, study).

    Cheap checks come first, then the data; ``echo`` (e.g. ``print``) gets the
    plan (for ``workers`` processes, see :func:`worker_count`) and the
    reference's training lines before anything is trained.
    """
    check(cfg)
    device = device_for(cfg, worker)
    data = load_data(cfg, device=device)
    sampler = make_sampler(cfg, data)  # checks min_distance can be met
    check_attack(cfg, data.input_shape)  # an L2 budget against the images' size
    if echo is not None:
        echo("plan:")
        for line in plan(cfg, data, device, workers=workers):
            echo(line)
    reference = make_reference(cfg, data, device=device, echo=echo)
    interrupt.check()
    objective = make_objective(cfg, data, reference, device=device)
    interrupt.check()
    study = make_study(cfg, sampler, objective)
    return Pipeline(cfg, device, data, reference, objective, sampler, study)
