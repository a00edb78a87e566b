"""Settings of ``gmsearch compare``: ``--seeds`` and ``--ways`` parsed, each way's config, the ``--quick`` config.

A way is a sampler name with optional sampler params in brackets
(``niche[immigrants=0.5]``) and config settings as dotted keys
(``niche[fitness.last_epochs=2]``, sections :data:`WAY_SECTIONS`); :func:`way_config`
gives one way's config under one seed, its study ``<study>-<way label>-s<seed>``.
"""

from __future__ import annotations

import copy
from typing import Any

from gmsearch import config as config_module
from gmsearch.config import RunConfig
from gmsearch.errors import UsageError

#: The config sections a way spec may set with dotted keys (``niche[fitness.last_epochs=3]``): how the way trains,
#: scores and searches. The data, reference and attack are shared by every way of a seed.
WAY_SECTIONS = ("fitness", "search", "training")
#: Settings no way spec may change: how every way is scored on test, and the way's own name and params.
_SHARED_KEYS = {"fitness": ("name", "params"), "search": ("sampler", "sampler_params")}


def parse_seeds(text: str) -> list[int]:
    """``0-4`` -> 0..4, ``0,2,5`` -> those, ``3`` -> [3]; one line naming the form otherwise."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise UsageError(f"--seeds {text!r}: give a range (0-4) or a list (0,1,2) of integers >= 0") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UsageError(f"--seeds {text!r}: give a range (0-4) or a list (0,1,2) of distinct integers >= 0")
    return seeds


def quick_config(cfg: RunConfig) -> RunConfig:
    """A smoke-run version of ``cfg`` (``--quick``): 8x8 images, 8 train and 5 test images per class, a 2 x 1
    population for 1 generation of 1 epoch, genomes of at most 4 blocks and 50k parameters, a 2-epoch reference,
    3 attack steps; its studies are named
    ``<study>-quick-...``, apart from a full comparison's."""
    cfg = copy.deepcopy(cfg)
    cfg.study.name = f"{cfg.study.name}-quick"
    cfg.data.image_size, cfg.data.max_train_per_class, cfg.data.max_test_per_class = 8, 8, 5
    cfg.reference.epochs = 2
    s = cfg.search
    s.population_size, s.n_children, s.generations, s.epochs, s.min_distance = 2, 1, 1, 1, 1.0
    s.max_blocks = min(s.max_blocks, 4)  # small genomes (restarts trains its genome as given: hand_a is larger)
    s.max_params = min(s.max_params or 50_000, 50_000)
    cfg.attack.params = {**cfg.attack.params, "steps": 3}
    cfg.training.batch_size = 32
    return cfg


def parse_ways(text: str) -> list[str]:
    """``niche,random,niche[immigrants=0.5]`` -> the way specs (commas inside brackets belong to the spec)."""
    ways, depth, part = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            ways.append(part.strip())
            part = ""
        else:
            part += char
    ways.append(part.strip())
    return [w for w in ways if w]


def split_way(way: str) -> tuple[str, dict[str, Any]]:
    """A way spec's sampler name and params: ``niche[immigrants=0.5, mutations_per_child=[2, 3]]`` ->
    ``("niche", {"immigrants": 0.5, "mutations_per_child": [2, 3]})`` (values in TOML syntax); a dotted key sets
    a config setting (``fitness.last_epochs=3`` -> ``{"fitness": {"last_epochs": 3}}``, see :func:`way_config`)."""
    name, bracket, rest = way.partition("[")
    if not bracket:
        return way.strip(), {}
    if not rest.endswith("]"):
        raise UsageError(f"way {way!r}: write a sampler name with optional params, e.g. niche[immigrants=0.5]")
    import tomllib

    try:
        params = tomllib.loads(f"p = {{ {rest[:-1]} }}")["p"]
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"way {way!r}: its params must be TOML key = value pairs ({exc})") from None
    return name.strip(), params


def _flat(params: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"fitness": {"last_epochs": 3}, "immigrants": 0.5}`` -> ``[("fitness.last_epochs", 3), ("immigrants", 0.5)]``
    (config sections flattened to dotted keys; other values as they are)."""
    out: list[tuple[str, Any]] = []
    for key, value in params.items():
        if not prefix and key in config_module.section_names() and isinstance(value, dict):
            out += _flat(value, f"{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def way_label(way: str) -> str:
    """The way's part of its study names: ``niche[immigrants=0.5]`` -> ``niche-immigrants0.5``,
    ``niche[fitness.last_epochs=3]`` -> ``niche-fitness.last_epochs3``."""
    name, params = split_way(way)
    suffix = "".join(f"-{k}{str(v).replace(' ', '')}" for k, v in sorted(_flat(params)))
    return f"{name}{suffix}"


def way_config(cfg: RunConfig, way: str, seed: int) -> RunConfig:
    """``cfg`` for one way and seed: its study ``<study>-<way label>-s<seed>``, its sampler (with the spec's
    params over the configured ones of the same sampler), its seed, and the config settings the spec names with
    dotted keys (``training.lam=0.5``, ``fitness.last_epochs=3``, ``search.pruner="niche"``: sections
    :data:`WAY_SECTIONS`, validated as in a config file; a :class:`UsageError` naming the way otherwise)."""
    name, params = split_way(way)
    sections = {k: v for k, v in params.items() if k in config_module.section_names() and isinstance(v, dict)}
    params = {k: v for k, v in params.items() if k not in sections}
    out = copy.deepcopy(cfg)
    if sections:
        for section, values in sections.items():
            shared = [k for k in values if k in _SHARED_KEYS.get(section, ())]
            if section not in WAY_SECTIONS or shared:
                what = f"{section}.{shared[0]}" if shared else f"[{section}]"
                raise UsageError(
                    f"way {way!r}: {what} is the same for every way; a way may set the keys of "
                    f"{', '.join(f'[{s}]' for s in WAY_SECTIONS)} (but fitness.name/params and search.sampler/"
                    "sampler_params), e.g. niche[fitness.last_epochs=3]"
                )
        merged = config_module.to_dict(out)
        for section, values in sections.items():
            merged[section] = {**merged[section], **values}
        try:
            out = config_module.parse(merged)
        except config_module.ConfigError as exc:
            raise UsageError(f"way {way!r}: {exc}") from None
    out.seed = seed
    if name != cfg.search.sampler:
        out.search.sampler_params = {}  # the configured params belong to the configured way
    out.search.sampler_params = {**out.search.sampler_params, **params}
    out.search.sampler = name
    out.study.name = f"{cfg.study.name}-{way_label(way)}-s{seed}"
    return out


def objective_key(cfg: RunConfig) -> str:
    """What makes one way's objective differ from another's of the same seed (its training and scoring)."""
    s = cfg.search
    return repr((cfg.training, cfg.fitness, s.epochs, s.inherit, s.inherit_epochs))
