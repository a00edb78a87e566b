"""The paper's experiments: one shared pipeline, one function per table, the paper's numbers beside ours.

The scripts in ``examples/`` are thin: they parse the common command line
(:func:`experiment_parser`), build an :class:`Experiment` (dataset, frozen
reference, GM objective, Optuna study; everything expensive cached on disk),
call one table function and print it. Every table function returns a
:class:`PaperTable` (measured numbers, the paper's numbers where the paper has
them) and records it on the study as the user attr
``gmsearch:results:<table>`` (see :meth:`Experiment.record`), so reports and
dashboards find the results next to the search that produced them.

Networks compared (paper section 4):

- **Ref**: the reference itself (adversarial accuracy is white-box, since
  the adversarial examples are made from it).
- **Ref+GM**: the reference's architecture trained from scratch with GM
  against the reference.
- **HE+GM**: the hand-engineered baseline ``hand_b`` (Appendix A) trained with GM.
- **NE+GM k**: the k-th best network of the final population (by validation
  fitness) with the weights its trial saved, optionally refined with
  ``refine_epochs`` more GM epochs (the paper refines for 1,000).

Baselines are trained for as many epochs as the NE+GM networks got (their
trial's epochs plus refinement) unless ``baseline_epochs`` says otherwise,
so no network gets a larger budget. Trained baselines are cached by a hash of
everything they depend on, so the scripts share them.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from gmsearch import attacks, cache, config, pipeline
from gmsearch.attacks import AdversarialSet, adversarial_set
from gmsearch.config import RunConfig
from gmsearch.data import Split, limit_per_class
from gmsearch.nets import references
from gmsearch.nets.builder import build
from gmsearch.nets.genome import Genome
from gmsearch.paper.settings import ExperimentSettings, PaperTable, _clean, settings_from_args
from gmsearch.runner import optimize_until_finished
from gmsearch.search import schema
from gmsearch.search.baselines import reference_architecture, train_with_gm
from gmsearch.search.objective import GMObjective, load_trial_model
from gmsearch.search.sampler import n_trials_for
from gmsearch.search.schema import RESULTS_PREFIX
from gmsearch.search.selection import ranked_population
from gmsearch.training.defenses import (
    fast_adversarial_training,
    free_adversarial_training,
)
from gmsearch.training.loop import resolve_device, train

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the experiment


def _print(*parts: Any) -> None:
    print(*parts, flush=True)


class Experiment:
    """Data, reference, GM objective and study of one experiment, with cached baselines.

    Args:
        settings: What to run (see :class:`ExperimentSettings`).
        verbose: Print progress lines.
    """

    def __init__(self, settings: ExperimentSettings, *, verbose: bool = True) -> None:
        self.settings = settings
        self.verbose = verbose
        self.started = time.perf_counter()
        self.workdir = Path(settings.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cache_dir = self.workdir / "cache"
        self.artifact_dir = self.workdir / "artifacts"
        self.storage = settings.storage or f"sqlite:///{(self.workdir / 'experiments.db').resolve()}"
        self.device = resolve_device(settings.device)
        self.study_name = settings.study_name or (
            f"paper-{settings.label()}-{settings.reference}{'-quick' if settings.quick else ''}"
        )
        self.config = self.run_config()
        self.data = pipeline.load_data(self.config, device=self.device)
        self.log(f"data: {settings.label()} {self.data!r}")
        self.reference = pipeline.make_reference(self.config, self.data, device=self.device)
        self.log(f"reference: {settings.reference} ({settings.reference_epochs} epochs), "
                 f"test accuracy {100 * (self.reference.clean_acc or 0):.2f}%")
        self._objective: GMObjective | None = None
        self._study: optuna.Study | None = None
        self._reported_reuse = False

    def run_config(self) -> RunConfig:
        """These settings as the run configuration :mod:`gmsearch.pipeline` assembles the search from."""
        s = self.settings
        data: dict[str, Any] = {"name": s.dataset, "reduced": s.reduced}
        for key in ("image_size", "max_train_per_class", "max_test_per_class"):
            if getattr(s, key) is not None:
                data[key] = getattr(s, key)
        return config.parse({
            "seed": s.seed, "device": s.device or "auto", "data": data,
            "reference": {"name": s.reference, "epochs": s.reference_epochs},
            "attack": {"name": "pgd_linf", "params": self.attack_overrides("pgd_linf")},
            "training": {"lam": s.lam},
            "search": {
                "population_size": s.population, "n_children": s.children, "generations": s.generations,
                "epochs": s.epochs, "max_blocks": s.max_blocks, "max_params": s.max_params,
            },
            "study": {
                "name": self.study_name, "storage": self.storage, "artifacts": str(self.artifact_dir),
                "cache_dir": str(self.cache_dir),
            },
        })

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Experiment:
        """An experiment from parsed :func:`experiment_parser` arguments (also quiets library logs)."""
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        threads = getattr(args, "threads", None) or (1 if args.quick else None)
        if threads:
            torch.set_num_threads(threads)
        return cls(settings_from_args(args))

    def log(self, message: str) -> None:
        """Print ``message`` with the elapsed time (when verbose)."""
        if self.verbose:
            _print(f"[{time.perf_counter() - self.started:6.1f}s] {message}")

    # ---- attacks

    @property
    def in_channels(self) -> int:
        return self.data.input_shape[0]

    def attack_overrides(self, name: str) -> dict[str, Any]:
        """``--attack-steps`` and ``--eps`` as parameters of attack ``name`` (eps keeps the default step ratio)."""
        s = self.settings
        budget = attacks.default_budget(name, in_channels=3 if s.dataset.endswith(".npz") or s.dataset == "cifar10"
                                         else 1)
        out: dict[str, Any] = {"steps": s.attack_steps} if "steps" in budget else {}
        if s.eps is not None and name in ("pgd_linf", "mi_fgsm", "fgsm"):
            out["eps"] = s.eps
            if "alpha" in budget:
                out["alpha"] = budget["alpha"] * s.eps / budget["eps"]
        return out

    def attack_params(self, name: str) -> dict[str, Any]:
        """Budget of attack ``name``: :func:`gmsearch.pipeline.attack_params` under :meth:`attack_overrides`."""
        return pipeline.attack_params(self.config, self.data.input_shape, name=name,
                                      overrides=self.attack_overrides(name))

    def attack(self, name: str = "pgd_linf", **overrides: Any) -> attacks.Attack:
        """Attack ``name`` with this experiment's budget (``overrides`` win)."""
        return attacks.create(name, **{**self.attack_params(name), **overrides})

    def adversarial(self, attack: attacks.Attack | str = "pgd_linf", *, source: nn.Module | None = None,
                    split: str = "test") -> AdversarialSet:
        """Adversarial examples of a split made from ``source`` (default the reference), cached."""
        atk = self.attack(attack) if isinstance(attack, str) else attack
        part = getattr(self.data, split)
        return adversarial_set(
            source if source is not None else self.reference, part.x, part.y, atk, cache_dir=self.cache_dir,
            tag=split,
        )

    # ---- search

    @property
    def objective(self) -> GMObjective:
        """The GM objective (adversarial validation set and reference gradients made once, cached)."""
        if self._objective is None:
            self._objective = pipeline.make_objective(self.config, self.data, self.reference, device=self.device)
        return self._objective

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (created or resumed)."""
        if self._study is None:
            sampler = pipeline.make_sampler(self.config, self.data)
            self._study = pipeline.make_study(self.config, sampler, self.objective)
        return self._study

    def search(self) -> optuna.Study:
        """Run or resume the search until the study has all its ``--generations`` (one worker of any number)."""
        s = self.settings
        study = self.study
        done = sum(1 for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE)
        total = n_trials_for(s.generations, s.population, s.children)
        if done >= total:
            if not self._reported_reuse:
                self.log(f"study {self.study_name!r}: {done} trials stored, {s.generations} generations done; "
                         "reusing it")
                self._reported_reuse = True
            return study
        self.log(
            f"search: study {self.study_name!r} in {self.storage}: population {s.population} x {s.children} "
            f"children, {s.generations} generations, {s.epochs} epochs per child; {total - done} trials to run"
        )

        def progress(study: optuna.Study, trial: FrozenTrial) -> None:
            if trial.state == TrialState.COMPLETE:
                self.log(
                    f"  trial {trial.number}: fitness {trial.value:.4f} (val clean "
                    f"{trial.user_attrs.get('clean_acc', float('nan')):.4f}, adv "
                    f"{trial.user_attrs.get('adv_acc', float('nan')):.4f}), {trial.user_attrs.get('epochs')} epochs"
                )
            else:
                self.log(f"  trial {trial.number}: {trial.state.name}")

        optimize_until_finished(study, self.objective, callbacks=[progress])
        return study

    def evolved(self, top: int = 2) -> list[tuple[str, nn.Module, FrozenTrial]]:
        """The ``top`` best candidates of the final population (NE+GM), refined if ``--refine-epochs``.

        Runs or resumes the search first if the study is short of ``--generations``.
        Refinement is :func:`gmsearch.refine` (weights and accuracies stored on
        the study; a candidate already refined for as many epochs is reused).
        """
        study = self.search()
        ranked = ranked_population(study)[:top]
        if not ranked:
            raise RuntimeError(f"study {self.study_name!r} has no completed candidates to evaluate")
        refined = self._refined(top) if self.settings.refine_epochs else {}
        out = []
        for i, trial in enumerate(ranked, start=1):
            net = refined.get(trial.number)
            if net is None:
                if self.settings.refine_epochs:
                    self.log(f"trial {trial.number} has no refined weights (diverged?); using its search weights")
                net = load_trial_model(trial, self.objective.artifact_store, self.data, device=self.device)
            out.append((f"NE+GM {i}", net, trial))
        return out

    def _refined(self, top: int) -> dict[int, nn.Module]:
        from gmsearch.search.refinement import refine

        epochs = self.settings.refine_epochs
        self.log(f"refining the top {top} candidates for {epochs} GM epochs (stored on the study; reused)")
        results = refine(self.study, self.objective, epochs=epochs, top=top)
        store = self.objective.artifact_store
        assert store is not None
        return {
            result.trial: schema.build_from_weights(schema.load_weights(result.weights, [store]), device=self.device)
            for result in results
        }

    def network_epochs(self) -> int:
        """Epochs every baseline gets: ``--baseline-epochs``, else what the best NE+GM network got."""
        if self.settings.baseline_epochs is not None:
            return self.settings.baseline_epochs
        ranked = ranked_population(self.search())
        trial_epochs = int(ranked[0].user_attrs.get("epochs", self.settings.epochs)) if ranked else self.settings.epochs
        return trial_epochs + self.settings.refine_epochs

    # ---- trained networks (cached)

    def trained(
        self,
        name: str,
        factory: Callable[[], nn.Module],
        *,
        architecture: str,
        method: str = "gm",
        epochs: int | None = None,
        seed: int | None = None,
        **options: Any,
    ) -> nn.Module:
        """A network built by ``factory`` and trained by ``method``, cached on disk.

        Args:
            name: Readable name (log lines, cache file name).
            factory: Builds the untrained network.
            architecture: Identifies the architecture in the cache key (a name or a genome's JSON).
            method: ``"gm"`` (CE + lam * GM against the reference), ``"ce"``
                (plain cross-entropy), ``"free_at"`` or ``"fast_at"`` (adversarial training).
            epochs: Training epochs (default :meth:`network_epochs`).
            seed: Initialisation and batch-order seed (default ``--seed + 1``).
            **options: Extra arguments of the training function (part of the key).
        """
        epochs = self.network_epochs() if epochs is None else epochs
        seed = self.settings.seed + 1 if seed is None else seed
        meta = {
            "what": "trained_network", "architecture": architecture, "method": method, "epochs": epochs,
            "seed": seed, "data": self.data.fingerprint(), "options": options,
            "reference": cache.state_digest(self.reference.state_dict()) if method == "gm" else None,
            "lam": self.settings.lam if method == "gm" else None,
        }
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        path = self.cache_dir / "networks" / f"{safe}-{cache.content_hash(meta)}.pt"

        def make() -> nn.Module:
            torch.manual_seed(seed)
            return factory()

        def compute() -> dict[str, torch.Tensor]:
            self.log(f"training {name} ({method}, {epochs} epochs)")
            net = make()
            if method == "gm":
                train_with_gm(net, self.objective, epochs=epochs, seed=seed, **options)
            elif method == "ce":
                train(net, self.data, lam=0.0, epochs=epochs, device=self.device, seed=seed, **options)
            elif method == "free_at":
                free_adversarial_training(net, self.data, epochs=epochs, device=self.device, seed=seed, **options)
            elif method == "fast_at":
                fast_adversarial_training(net, self.data, epochs=epochs, device=self.device, seed=seed, **options)
            else:
                raise ValueError(f"method must be gm, ce, free_at or fast_at, got {method!r}")
            return dict(net.state_dict())

        state = cache.cached_tensors(path, meta, compute, what=f"trained {name}")
        net = make()
        net.load_state_dict(state)
        return net.to(self.device).eval()

    def architecture(self, arch: str) -> Callable[[], nn.Module]:
        """Factory of a fresh network of registered architecture ``arch`` for this data."""
        return lambda: references.build_architecture(arch, self.data)

    def genome_factory(self, genome: Genome) -> Callable[[], nn.Module]:
        """Factory of a fresh network built from ``genome`` for this data."""
        channels, h, w = self.data.input_shape
        return lambda: build(genome, in_channels=channels, num_classes=self.data.num_classes, image_size=(h, w))

    def ref_gm(self, epochs: int | None = None) -> nn.Module:
        """Ref+GM: the reference's architecture trained with GM (cached), built as the quickstart builds it."""
        seed = self.settings.seed + 1
        arch = self.settings.reference
        return self.trained("Ref+GM", lambda: reference_architecture(self.reference, self.data, seed=seed),
                            architecture=arch, epochs=epochs, seed=seed)

    def hand_gm(self, arch: str = "hand_b", epochs: int | None = None) -> nn.Module:
        """HE+GM: the hand-engineered baseline trained with GM (cached)."""
        return self.trained("HE+GM", self.architecture(arch), architecture=arch, epochs=epochs)

    def source_model(self, arch: str) -> nn.Module:
        """An independently trained source model (plain CE, cached) for transfer experiments."""
        s = self.settings
        data = limit_per_class(self.data, train=s.source_train_per_class, seed=s.seed)
        return references.get(arch, data, epochs=s.source_epochs, seed=s.seed + 7, device=self.device,
                              cache_dir=self.cache_dir)

    def test_split(self) -> Split:
        """The test split, or a seeded random subset of ``test_limit`` images (quick runs)."""
        part = self.data.test
        limit = self.settings.test_limit
        if limit is None or limit >= len(part):
            return part
        generator = torch.Generator().manual_seed(self.settings.seed)
        idx = torch.randperm(len(part), generator=generator)[:limit].sort().values.to(part.x.device)
        return Split(part.x[idx], part.y[idx])

    # ---- results

    def budget(self) -> str:
        """The budget behind this experiment's numbers, in one line (printed under every table's title)."""
        s = self.settings
        refine = f"{s.refine_epochs} refinement epochs" if s.refine_epochs else "no refinement"
        generations = f"{s.generations} generation{'s' * (s.generations != 1)}"
        return (f"population {s.population} x {s.children} children, {generations}, {s.epochs} "
                f"epochs per child, max_blocks {s.max_blocks}, {refine}")

    def header(self) -> str:
        """Lines naming the data, reference, attack and budget (printed above every table)."""
        s = self.settings
        return "\n".join([
            f"dataset {s.label()}: train {len(self.data.train)} / val {len(self.data.val)} / test "
            f"{len(self.data.test)}, input {self.data.input_shape}",
            f"reference {s.reference}: test accuracy {100 * (self.reference.clean_acc or 0):.2f}% "
            f"({s.reference_epochs} epochs)",
            f"search budget: population {s.population} x {s.children} children, {s.generations} generations, "
            f"{s.epochs} epochs per child, lam {s.lam}; refine {s.refine_epochs} epochs",
            f"transfer attack: {self.attack('pgd_linf').describe()}",
        ])

    def record(self, table: PaperTable) -> None:
        """Store ``table`` on the study as user attr ``gmsearch:results:<key>`` (with settings and run time)."""
        payload = {
            **table.as_dict(),
            "settings": _clean(asdict(self.settings)),
            "seconds": round(time.perf_counter() - self.started, 1),
            "text": table.to_text(),
        }
        json.dumps(payload)  # fail here, not inside the storage, if something is not serialisable
        self.study.set_user_attr(RESULTS_PREFIX + table.key, payload)
        self.log(f"results stored on study {self.study_name!r} as user attr {RESULTS_PREFIX + table.key!r}")


