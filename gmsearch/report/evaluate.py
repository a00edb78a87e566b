"""``gmsearch evaluate``: a study's networks scored on the adversarial sets a real attacker would make.

Sources (the attacker's models, each trained once and cached as references are):

- ``reference``: the study's reference (the search's own threat model);
- ``reference_at``: the reference's architecture trained from scratch with fast adversarial
  training (Wong et al. 2020) at a quarter of the ``pgd_linf`` budget's ``eps``: a slightly robust reference;
- any architecture name (``resnet18``, ``vgg11_bn``, ``densenet121``, ``squeezenet1_1``, ``hand_b``, ...):
  an independently trained network (plain cross-entropy, seed ``seed + 7`` as the paper scripts' sources);
- ``ensemble:a+b+c``: one attack against the averaged logits of those sources;
- ``study:NAME``: the best candidate of another study in the same storage, e.g. another way's or another
  seed's search (an evolved network as the attacker's model; it must take the same images).

A source an attack cannot use (``sgm`` on a network without skip connections) leaves that pair out, and
says so.

Every (source, attack) pair makes one adversarial set of the test split (the attack's default budget for
the dataset, :func:`gmsearch.pipeline.attack_params` without the config's ``[attack] params``, so every
column of the matrix has the same kind of budget), cached by :func:`gmsearch.attacks.adversarial_set`
with the content hash of the source's weights, the images and the attack. Each network gets one row: its
accuracy on every set, the worst pair, the share of images it gets right under every pair ("all"), and its
own white-box ``pgd_linf`` accuracy (GM is a transfer defense: that column is not expected to be high).
Rows: the chosen trials (NE+GM), Ref, Ref+GM (the reference's architecture trained with GM) and HE+GM
(``hand_b`` trained with GM). The matrix is stored on the study (:data:`~gmsearch.search.schema.TRANSFER_KEY`)
and drawn by ``gmsearch report`` as a heat map.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import Tensor, nn

from gmsearch import attacks, cache, config, pipeline
from gmsearch.errors import UsageError
from gmsearch.evaluation.metrics import predict
from gmsearch.evaluation.tables import percent, text_table
from gmsearch.nets import architectures, references
from gmsearch.search import schema
from gmsearch.search.baselines import reference_architecture, train_with_gm
from gmsearch.search.objective import GMObjective, load_trial_model
from gmsearch.search.selection import ranked_population
from gmsearch.search.study import open_study
from gmsearch.training.defenses import fast_adversarial_training, fresh_copy

#: Sources and attacks when none are named.
DEFAULT_SOURCES = ("reference", "reference_at", "resnet18", "vgg11_bn", "densenet121", "squeezenet1_1", "hand_b")
DEFAULT_ATTACKS = ("fgsm", "mi_fgsm", "ni_fgsm", "vmi_fgsm", "ti_fgsm")
#: The white-box attack of each network's own column.
WHITE_BOX = "pgd_linf"
#: ``reference_at``'s training budget: this share of the white-box attack's ``eps``.
AT_EPS_SHARE = 0.25
ENSEMBLE_PREFIX = "ensemble:"
STUDY_PREFIX = "study:"
#: ``--quick``: test images, source / baseline epochs.
QUICK_IMAGES, QUICK_EPOCHS = 64, 1


@dataclass(frozen=True)
class TransferEvaluation:
    """Adversarial accuracy of each network on each (source, attack) set.

    Attributes:
        networks: Row names (``NE+GM (trial N)``, ``Ref``, ``Ref+GM``, ``HE+GM``).
        pairs: Column names ``source/attack``.
        acc: ``acc[n][p]``: accuracy of network ``n`` on pair ``p``'s set.
        worst: Per network, the lowest of its row.
        all: Per network, the share of images it classifies correctly under every pair (<= ``worst``).
        clean: Per network, clean accuracy on the same images.
        white_box: Per network, accuracy under its own white-box ``pgd_linf`` (a transfer defense: not robust).
        attacks: ``name -> Attack.describe()`` of each attack used.
        split: The split the sets were made from; ``n_images`` its size.
    """

    networks: tuple[str, ...]
    pairs: tuple[str, ...]
    acc: tuple[tuple[float, ...], ...]
    worst: tuple[float, ...]
    all: tuple[float, ...]
    clean: tuple[float, ...]
    white_box: tuple[float, ...]
    attacks: dict[str, str]
    split: str
    n_images: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable content (the study user attr)."""
        out = dataclasses.asdict(self)
        return {k: (list(map(list, v)) if k == "acc" else list(v) if isinstance(v, tuple) else v)
                for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TransferEvaluation:
        """The inverse of :meth:`as_dict`."""
        tup = {k: tuple(values[k]) for k in ("networks", "pairs", "worst", "all", "clean", "white_box")}
        return cls(**tup, acc=tuple(tuple(r) for r in values["acc"]), attacks=dict(values["attacks"]),
                   split=values["split"], n_images=int(values["n_images"]))

    def to_text(self) -> str:
        """One row per network: clean, every pair, worst, all, white-box PGD."""
        rows = [[net, percent(self.clean[n]), *(percent(a) for a in self.acc[n]), percent(self.worst[n]),
                 percent(self.all[n]), percent(self.white_box[n])] for n, net in enumerate(self.networks)]
        notes = [f"{name}: {text}" for name, text in self.attacks.items()]
        notes.append("worst: lowest over pairs; all: correct under every pair; white-box: the network's own "
                     f"{WHITE_BOX} (GM defends against transfer, not white-box attacks)")
        return text_table(["network", "clean", *self.pairs, "worst", "all", "white-box"], rows, notes=notes,
                          title=f"adversarial accuracy on each source/attack set; {self.split} split, "
                                f"{self.n_images} images")

    def __str__(self) -> str:
        return self.to_text()


def _is_architecture(name: str) -> bool:
    return name in architectures.names()


def check_names(sources: Sequence[str], attack_names: Sequence[str]) -> None:
    """One :class:`UsageError` line for an unknown source or attack name (before anything trains)."""
    known = ["reference", "reference_at", *architectures.names(), "ensemble:a+b+...", "study:NAME"]
    if not sources or not attack_names:
        raise UsageError("evaluate needs at least one source and one attack")
    for source in sources:
        parts = source[len(ENSEMBLE_PREFIX):].split("+") if source.startswith(ENSEMBLE_PREFIX) else [source]
        for part in parts:
            named_study = part.startswith(STUDY_PREFIX) and len(part) > len(STUDY_PREFIX)
            if part not in ("reference", "reference_at") and not _is_architecture(part) and not named_study:
                raise UsageError(f"unknown source {part!r}; sources: {', '.join(known)}")
    allowed = [n for n in attacks.names() if n != "ensemble"]
    for name in attack_names:
        if name not in allowed:
            raise UsageError(f"unknown attack {name!r}; attacks: {', '.join(allowed)}")


def _choose(study: optuna.Study, trial: int | None, whole_population: bool) -> list[FrozenTrial]:
    if trial is not None:
        found = [t for t in study.get_trials(deepcopy=False) if t.number == trial and t.state == TrialState.COMPLETE]
        if not found:
            raise UsageError(f"study {study.study_name!r} has no completed trial {trial}")
        return found
    ranked = ranked_population(study)
    if not ranked:
        raise UsageError(f"study {study.study_name!r} has no completed candidate to evaluate")
    return ranked if whole_population else ranked[:1]


def _config(study: optuna.Study) -> config.RunConfig:
    stored = study.user_attrs.get(schema.CONFIG_KEY)
    if stored is None:
        raise UsageError(f"study {study.study_name!r} does not record its run configuration (made before "
                         "gmsearch recorded it); pass --config FILE, the config it was run with")
    return config.parse(stored)


class Networks:
    """Sources and baselines of one evaluation, each trained once and cached (progress through ``say``)."""

    def __init__(self, cfg: config.RunConfig, objective: GMObjective, *, source_epochs: int, baseline_epochs: int,
                 say: Callable[[str], None]) -> None:
        self.cfg, self.objective, self.say = cfg, objective, say
        self.data, self.reference = objective.data, objective.reference
        self.source_epochs, self.baseline_epochs = source_epochs, baseline_epochs
        self.cache_dir = pipeline.cache_dir(cfg)
        self._sources: dict[str, nn.Module] = {}

    def _trained(self, name: str, factory: Callable[[], nn.Module], method: str, epochs: int, seed: int,
                 fit: Callable[[nn.Module], object], **key: Any) -> nn.Module:
        meta = {"what": "trained_network", "name": name, "method": method, "epochs": epochs, "seed": seed,
                "data": self.data.fingerprint(), "reference": cache.state_digest(self.reference.state_dict()),
                **key}
        path = self.cache_dir / "networks" / f"{name.replace('+', '_')}-{cache.content_hash(meta)}.pt"

        def make() -> nn.Module:
            torch.manual_seed(seed)
            return factory()

        def compute() -> dict[str, Tensor]:
            self.say(f"training {name} ({method}, {epochs} epochs; cached at {path})")
            net = make()
            fit(net)
            return dict(net.state_dict())

        state = cache.cached_tensors(path, meta, compute, what=f"trained {name}")
        net = make()
        net.load_state_dict(state)
        return net.to(self.objective.device).eval()

    def source(self, name: str) -> nn.Module:
        if name not in self._sources:
            self._sources[name] = self._make_source(name)
        return self._sources[name]

    def _make_source(self, name: str) -> nn.Module:
        seed = self.cfg.seed + 7
        if name == "reference":
            return self.reference
        if name.startswith(ENSEMBLE_PREFIX):
            return attacks.ModelEnsemble([self.source(p) for p in name[len(ENSEMBLE_PREFIX):].split("+")])
        if name.startswith(STUDY_PREFIX):
            other = open_study(self.cfg.study.storage, name[len(STUDY_PREFIX):])
            best = _choose(other, None, False)[0]
            self.say(f"source {name}: its best candidate, trial {best.number}")
            return load_trial_model(best, self.objective.artifact_store, self.data,
                                    device=self.objective.device).eval()
        if name == "reference_at":
            budget = pipeline.attack_params(self.cfg, self.data.input_shape, name=WHITE_BOX, overrides={})
            eps = AT_EPS_SHARE * float(budget["eps"])
            return self._trained(
                "reference_at", lambda: fresh_copy(self.reference, seed=seed), "fast_at", self.source_epochs, seed,
                lambda net: fast_adversarial_training(net, self.data, eps=eps, epochs=self.source_epochs,
                                                      device=self.objective.device, seed=seed), eps=eps,
            )
        cached = references.cached_file(name, self.data, epochs=self.source_epochs, seed=seed,
                                        cache_dir=self.cache_dir)
        if cached is None:
            self.say(f"training source {name} ({self.source_epochs} epochs)")
        return references.get(name, self.data, epochs=self.source_epochs, seed=seed, device=self.objective.device,
                              cache_dir=self.cache_dir, progress=self.say)

    def _gm_recipe(self) -> dict[str, Any]:
        o = self.objective
        return {"lam": o.lam, "loss": str(o.loss), "batch_size": o.batch_size, "lr": o.lr,
                "gm_batchnorm": str(o.gm_batchnorm)}

    def ref_gm(self) -> nn.Module:
        seed = self.cfg.seed + 1
        return self._trained("Ref+GM", lambda: reference_architecture(self.reference, self.data, seed=seed), "gm",
                             self.baseline_epochs, seed,
                             lambda net: train_with_gm(net, self.objective, epochs=self.baseline_epochs, seed=seed),
                             **self._gm_recipe())

    def he_gm(self) -> nn.Module:
        seed = self.cfg.seed + 1
        return self._trained("HE+GM", lambda: references.build_architecture("hand_b", self.data), "gm",
                             self.baseline_epochs, seed,
                             lambda net: train_with_gm(net, self.objective, epochs=self.baseline_epochs, seed=seed),
                             **self._gm_recipe())


def score(networks: dict[str, nn.Module], sets: dict[str, Tensor], x: Tensor, y: Tensor,
          white_box: dict[str, Tensor], *, attack_names: dict[str, str], split: str) -> TransferEvaluation:
    """The matrix from adversarial images: ``sets`` (pair name -> images), ``white_box`` (network -> its own)."""
    acc, worst, every, clean, wb = [], [], [], [], []
    for name, net in networks.items():
        correct = [predict(net, adv).to(y.device) == y for adv in sets.values()]
        row = [c.float().mean().item() for c in correct]
        acc.append(tuple(row))
        worst.append(min(row))
        every.append(torch.stack(correct).all(0).float().mean().item())
        clean.append((predict(net, x).to(y.device) == y).float().mean().item())
        wb.append((predict(net, white_box[name]).to(y.device) == y).float().mean().item())
    return TransferEvaluation(
        networks=tuple(networks), pairs=tuple(sets), acc=tuple(acc), worst=tuple(worst), all=tuple(every),
        clean=tuple(clean), white_box=tuple(wb), attacks=attack_names, split=split, n_images=len(y),
    )


def transfer_sets(nets: Networks, sources: Sequence[str], made: dict[str, attacks.Attack], x: Tensor, y: Tensor,
                  *, say: Callable[[str], None]) -> dict[str, Tensor]:
    """``source/attack`` -> the adversarial test images of each usable pair (cached in the config's cache)."""
    sets: dict[str, Tensor] = {}
    for source in sources:
        model = nets.source(source)
        for name, atk in made.items():
            if not usable(atk, model):
                say(f"{source}/{name}: left out ({name} needs a source with skip connections)")
                continue
            say(f"adversarial set {source}/{name} ({len(y)} test images; cached)")
            sets[f"{source}/{name}"] = attacks.adversarial_set(model, x, y, atk, cache_dir=nets.cache_dir, tag="test").x
    return sets


def usable(attack: attacks.Attack, source: nn.Module) -> bool:
    """Whether ``attack`` can run on ``source`` (SGM needs a skip connection it knows)."""
    from gmsearch.attacks.sgm import SGM, skip_gradient_hooks
    from gmsearch.registry import PluginError

    if not isinstance(attack, SGM):
        return True
    try:
        with skip_gradient_hooks(source, attack.gamma):
            return True
    except PluginError:
        return False


def evaluate_transfer(
    storage: str | None = None,
    study_name: str | None = None,
    *,
    config_file: str | Path | None = None,
    trial: int | None = None,
    population: bool = False,
    sources: Sequence[str] = DEFAULT_SOURCES,
    attack_names: Sequence[str] = DEFAULT_ATTACKS,
    n_images: int | None = None,
    source_epochs: int | None = None,
    baseline_epochs: int | None = None,
    quick: bool = False,
    device: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> TransferEvaluation:
    """Score a study's network(s), Ref, Ref+GM and HE+GM on every (source, attack) set; store the matrix on the study.

    Args:
        storage: Storage URL (default: the config's).
        study_name: The study (default: the config's, else the only one in ``storage``).
        config_file: The run's TOML config (default: the configuration recorded on the study).
        trial: Evaluate this trial; default the best candidate; ``population``: every candidate.
        population: Evaluate the whole final population.
        sources: Source names (module docstring).
        attack_names: Registered attack names; budgets are the dataset's defaults.
        n_images: Evaluate on the first ``n_images`` test images (default all; ``quick``: 64).
        source_epochs: Epochs of every trained source (default the reference's; ``quick``: 1).
        baseline_epochs: GM epochs of Ref+GM and HE+GM (default the first trial's epochs; ``quick``: 1).
        quick: Few images and epochs (a smoke test).
        device: Override the config's device.
        echo: Progress lines (default: none).

    Raises:
        UsageError: an unknown source or attack name (checked first), trial, or a study without a recorded config.
    """
    say = echo or (lambda _line: None)
    check_names(sources, attack_names)
    cfg = config.load(config_file) if config_file is not None else None
    url = storage or (cfg.study.storage if cfg else "sqlite:///gmsearch.db")
    study = open_study(url, study_name or (cfg.study.name if cfg else None))
    cfg = cfg or _config(study)
    cfg.study.storage = url  # the recorded one has its password masked
    if device is not None:
        cfg.device = device
    chosen = _choose(study, trial, population)
    started = time.perf_counter()
    dev = pipeline.device_for(cfg)
    pipeline.check_device(dev)
    data = pipeline.load_data(cfg, device=dev)
    reference = pipeline.make_reference(cfg, data, device=dev, echo=say)
    objective = pipeline.make_objective(cfg, data, reference, device=dev)
    epochs_default = int(chosen[0].user_attrs.get("epochs", cfg.search.epochs))
    nets = Networks(cfg, objective, say=say,
                     source_epochs=source_epochs or (QUICK_EPOCHS if quick else cfg.reference.epochs),
                     baseline_epochs=baseline_epochs or (QUICK_EPOCHS if quick else epochs_default))
    limit = n_images or (QUICK_IMAGES if quick else None)
    part = data.test
    x, y = (part.x[:limit], part.y[:limit]) if limit else (part.x, part.y)

    networks: dict[str, nn.Module] = {
        f"NE+GM (trial {t.number})": load_trial_model(t, objective.artifact_store, data, device=dev) for t in chosen
    }
    networks["Ref"] = reference
    networks["Ref+GM"] = nets.ref_gm()
    networks["HE+GM"] = nets.he_gm()
    cache_dir = pipeline.cache_dir(cfg)
    made = {name: attacks.create(name, **pipeline.attack_params(cfg, data.input_shape, name=name, overrides={}))
            for name in attack_names}
    sets = transfer_sets(nets, sources, made, x, y, say=say)
    pgd = attacks.create(WHITE_BOX, **pipeline.attack_params(cfg, data.input_shape, name=WHITE_BOX, overrides={}))
    white: dict[str, Tensor] = {}
    for name, net in networks.items():
        say(f"white-box {WHITE_BOX} on {name}")
        white[name] = attacks.adversarial_set(net, x, y, pgd, cache_dir=cache_dir, tag="test-white-box").x
    described = {name: atk.describe() for name, atk in made.items()} | {f"white-box {WHITE_BOX}": pgd.describe()}
    result = score(networks, sets, x, y, white, attack_names=described, split="test")
    study.set_user_attr(schema.TRANSFER_KEY, result.as_dict())
    say(f"matrix stored on study {study.study_name!r} as {schema.TRANSFER_KEY!r} "
        f"({time.perf_counter() - started:.1f}s)")
    return result


def load_transfer(study: optuna.Study) -> TransferEvaluation | None:
    """The matrix ``gmsearch evaluate`` stored on ``study``, if any."""
    stored = study.user_attrs.get(schema.TRANSFER_KEY)
    return TransferEvaluation.from_dict(stored) if stored else None
