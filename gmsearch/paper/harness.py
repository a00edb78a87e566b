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
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from gmsearch import attacks, cache
from gmsearch import data as datasets
from gmsearch.attacks._base import AdversarialSet, adversarial_set
from gmsearch.data._loaders import Dataset, Split
from gmsearch.evaluation._metrics import (
    EvalResult,
    MaskingReport,
    TransferMatrix,
    evaluate,
    fooling_rate_from_predictions,
    gradient_masking_checks,
    predict,
    transfer_matrix,
)
from gmsearch.nets import references
from gmsearch.nets.builder import build
from gmsearch.nets.genome import Genome
from gmsearch.search import mutations
from gmsearch.search.objective import GMObjective, load_trial_model
from gmsearch.search.sampler import EpochSchedule, NicheEvolutionSampler, genome_of, n_trials_for, population
from gmsearch.search.study import create_study
from gmsearch.training.defenses import (
    BilateralDefense,
    JPEGDefense,
    fast_adversarial_training,
    free_adversarial_training,
    fresh_copy,
)
from gmsearch.training.loop import resolve_device, train

logger = logging.getLogger(__name__)

__all__ = [
    "PAPER",
    "QUICK",
    "Experiment",
    "ExperimentSettings",
    "PaperTable",
    "Row",
    "evolved_rows",
    "experiment_parser",
    "fig3",
    "format_table",
    "fresh_copy",
    "load_data",
    "reference_gm_row",
    "reference_row",
    "table1",
    "table2",
    "table3",
    "table4",
    "table5",
    "table6",
]

#: Prefix of the study user attrs the tables are recorded under.
RESULTS_PREFIX = "gmsearch:results:"

#: The paper's numbers (percent; Fig. 3 distances as printed). Tables 1-3 use
#: full CIFAR-10/MNIST/KMNIST with a ResNet-34 reference; Tables 4-7 and Fig. 3
#: the reduced datasets with the hand-engineered reference ``hand_a``. Table 4
#: is garbled in the paper's text and not reproduced here.
PAPER: dict[str, Any] = {
    "table1": {
        "setting": "full CIFAR-10, ResNet-34 reference, L-inf PGD",
        "Clean Acc.": [78.40, 80.82, 81.09, 80.62],
        "Adv. Acc. (L-inf PGD)": [23.10, 42.90, 54.12, 53.27],
    },
    "table2": {
        "setting": "full CIFAR-10, adversarial accuracy of Ref./Ref.+GM/NE+GM",
        "ResNet-18": [36.84, 47.40, 53.99],
        "VGG": [42.98, 52.35, 55.23],
        "DenseNet": [36.67, 48.44, 53.93],
        "SqueezeNet": [44.23, 52.48, 55.09],
    },
    "table3": {
        "setting": "full datasets, NE+GM architecture evolved on full CIFAR-10",
        "MNIST": {"Clean Acc.": [97.71, 97.73, 99.10], "Adv. Acc. (L-inf PGD)": [87.90, 95.50, 98.10]},
        "KMNIST": {"Clean Acc.": [95.69, 96.06, 97.51], "Adv. Acc. (L-inf PGD)": [75.80, 89.10, 94.40]},
    },
    "table7": {
        "setting": "reduced datasets, NE+GM architecture evolved on reduced CIFAR-10",
        "MNIST": {"Clean Acc.": [93.20, 92.30, 89.10], "Adv. Acc. (L-inf PGD)": [63.40, 77.00, 84.50]},
        "FMNIST": {"Clean Acc.": [88.90, 85.90, 87.00], "Adv. Acc. (L-inf PGD)": [51.20, 82.90, 81.90]},
        "KMNIST": {"Clean Acc.": [85.40, 86.80, 86.60], "Adv. Acc. (L-inf PGD)": [56.90, 83.50, 83.70]},
    },
    "table4": {"setting": "reduced CIFAR-10 (the paper's Table 4 is garbled in its text; no numbers given)"},
    "table5": {
        "setting": "reduced CIFAR-10, fooling rate 4.2.2 (lower is better)",
        "L-inf PGD": [17.42, 30.26, 16.10, 18.77],
        "L2 PGD": [36.04, 36.41, 28.83, 31.19],
        "FGSM": [69.07, 54.36, 60.26, 65.21],
    },
    "table6": {
        "setting": "reduced CIFAR-10, fooling rate 4.2.3 under L-inf PGD (lower is better)",
        "Ref.": 85.00, "Ref.+GM": 22.80, "HE+GM": 24.20, "NE+GM": 22.40,
        "JPEG Comp.": 84.4, "Bilateral Filt.": 48.80, "A.T. (Free)": 51.00, "A.T. (Fast)": 43.80,
    },
    "fig3": {"setting": "CIFAR-10, one image", "Ref.+GM": 0.687, "NE+GM": 1.297},
}

#: What ``--quick`` changes (a smoke run on a CPU in a few minutes; numbers are not meaningful).
QUICK: dict[str, Any] = {
    "image_size": 8,
    "generations": 1,
    "population": 3,
    "children": 1,
    "epochs": 5,
    "reference_epochs": 10,
    "attack_steps": 5,
    "max_params": 20_000,
    "max_train_per_class": 150,
    "max_test_per_class": 50,
    "source_epochs": 1,
    "source_train_per_class": 10,
    "test_limit": 100,
    "ig_steps": 16,
}

#: Defaults without ``--quick``.
FULL: dict[str, Any] = {
    "image_size": None,
    "generations": 3,
    "population": 4,
    "children": 2,
    "epochs": 8,
    "reference_epochs": 30,
    "attack_steps": 10,
    "max_params": 200_000,
    "max_train_per_class": None,
    "max_test_per_class": None,
    "source_epochs": 15,
    "source_train_per_class": None,
    "test_limit": None,
    "ig_steps": 50,
}


# --------------------------------------------------------------------------- rows (quickstart) and tables


@dataclass(frozen=True)
class Row:
    """One network's line of a results table (fractions in ``[0, 1]``)."""

    name: str
    clean_acc: float
    adv_acc: float
    fooling_rate: float | None = None
    detail: str = ""
    fooling_rate_reference: float | None = None


def _row(name: str, net: nn.Module, objective: GMObjective, detail: str = "") -> Row:
    result = evaluate(
        net, objective.data, adversarial=objective.adversarial_test, split="test", reference=objective.reference
    )
    assert result.adv_acc is not None
    return Row(name, result.clean_acc, result.adv_acc, result.fooling_rate, detail, result.fooling_rate_reference)


def reference_row(objective: GMObjective) -> Row:
    """The reference on the test split (adversarial accuracy is white-box)."""
    return _row("Ref", objective.reference, objective, detail="white-box")


def reference_gm_row(objective: GMObjective, *, epochs: int, seed: int = 1) -> Row:
    """The reference's architecture trained from scratch with GM against the reference."""
    net = fresh_copy(objective.reference, seed=seed)
    train(
        net, objective.data, reference=objective.reference, lam=objective.lam, epochs=epochs,
        batch_size=objective.batch_size, lr=objective.lr, loss=objective.loss,
        device=objective.device, seed=seed, ref_grads=objective.ref_grads,
    )
    return _row("Ref+GM", net, objective, detail=f"{epochs} epochs")


def _ranked_population(study: optuna.Study) -> list[FrozenTrial]:
    candidates = [t for t in population(study) if t.values]
    candidates.sort(key=lambda t: tuple(t.values), reverse=True)
    return candidates


def evolved_rows(study: optuna.Study, objective: GMObjective, *, top: int = 1) -> list[Row]:
    """The ``top`` best candidates of the final population (NE+GM), by validation fitness."""
    rows = []
    for i, trial in enumerate(_ranked_population(study)[:top], start=1):
        net = load_trial_model(trial, objective.artifact_store, objective.data, device=objective.device)
        name = "NE+GM" if top == 1 else f"NE+GM {i}"
        rows.append(_row(name, net, objective, detail=f"trial {trial.number}"))
    return rows


def format_table(rows: list[Row], *, title: str = "") -> str:
    """A plain-text table: name, clean accuracy, adversarial accuracy, fooling rate (4.2.2)."""
    lines = [title] if title else []
    lines.append(f"{'network':<10} {'clean acc':>10} {'adv acc':>10} {'fooling':>10}  detail")
    for r in rows:
        fool = f"{100 * r.fooling_rate:9.2f}%" if r.fooling_rate is not None else f"{'-':>10}"
        lines.append(f"{r.name:<10} {100 * r.clean_acc:9.2f}% {100 * r.adv_acc:9.2f}% {fool}  {r.detail}")
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf floats become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


@dataclass
class PaperTable:
    """A table in the paper's layout: measured values, with the paper's beside them.

    Attributes:
        key: Short name (``"table1"``); the study user attr is ``gmsearch:results:<key>``.
        title: First line printed.
        columns: Column headers (networks or defenses).
        rows: ``(label, values)``: one value per column, fractions in ``[0, 1]`` (or None).
        paper: Per row label, the paper's values in percent (None where it has none).
        notes: Lines printed under the table (attack, budgets, what the paper measured on).
        extra: More results recorded with the table (not printed).
        percent: Values are fractions printed as percentages (else printed as they are).
        wrap: Print at most this many columns per block (the paper's Table 6 has two blocks of four).
    """

    key: str
    title: str
    columns: list[str]
    rows: list[tuple[str, list[float | None]]]
    paper: dict[str, list[float | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    percent: bool = True
    wrap: int | None = None

    def value(self, row: str, column: str) -> float | None:
        """The measured value at ``(row, column)``."""
        for label, values in self.rows:
            if label == row:
                return values[self.columns.index(column)]
        raise KeyError(f"no row {row!r}; rows: {', '.join(r for r, _ in self.rows)}")

    def to_text(self) -> str:
        """The table as text: ``measured% [paper%]`` per cell."""
        with_paper = any(any(v is not None for v in vals) for vals in self.paper.values())
        unit = "%" if self.percent else ""
        cell_w = max(9, *(len(c) for c in self.columns)) if self.columns else 9
        cell_w = max(cell_w, 17) if with_paper else cell_w
        label_w = max(12, *(len(label) for label, _ in self.rows)) if self.rows else 12

        def cell(value: float | None, paper: float | None) -> str:
            shown = None if value is None or not math.isfinite(value) else (100 * value if self.percent else value)
            text = "-" if shown is None else f"{shown:.2f}{unit}" if self.percent else f"{shown:.3f}"
            if paper is not None:
                text += f" [{paper:.2f}{unit}]" if self.percent else f" [{paper:.3f}]"
            return f"{text:>{cell_w}}"

        lines = [self.title]
        step = self.wrap or max(len(self.columns), 1)
        for lo in range(0, len(self.columns), step):
            cols = slice(lo, lo + step)
            lines.append(" " * label_w + " " + " ".join(f"{c:>{cell_w}}" for c in self.columns[cols]))
            for label, values in self.rows:
                paper = list(self.paper.get(label) or [])[: len(values)]
                paper += [None] * (len(values) - len(paper))
                cells = [cell(v, p) for v, p in zip(values, paper, strict=True)][cols]
                lines.append(f"{label:<{label_w}} " + " ".join(cells))
        if with_paper:
            lines.append("[...] the paper's number; it was measured on the paper's data (see the setting below)")
        lines.extend(self.notes)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe content (NaN as None)."""
        out: dict[str, Any] = _clean(asdict(self))
        return out

    def __str__(self) -> str:
        return self.to_text()


# --------------------------------------------------------------------------- data


def dataset_label(spec: str) -> str:
    """A short name for a dataset spec: the registered name, or a ``.npz`` file's stem."""
    return Path(spec).stem if spec.endswith(".npz") else spec


def resize_dataset(data: Dataset, size: int) -> Dataset:
    """Every split resized to ``size x size`` (bilinear, antialiased, clamped to ``[0, 1]``)."""

    def resize(part: Split) -> Split:
        if tuple(part.x.shape[-2:]) == (size, size):
            return part
        x = F.interpolate(part.x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return Split(x.clamp_(0.0, 1.0).contiguous(), part.y)

    return Dataset(
        name=f"{data.name}@{size}px", train=resize(data.train), val=resize(data.val), test=resize(data.test),
        num_classes=data.num_classes, class_names=data.class_names,
    )


def _cap_per_class(part: Split, per_class: int | None, num_classes: int, seed: int) -> Split:
    if per_class is None:
        return part
    generator = torch.Generator().manual_seed(seed)
    y = part.y.cpu()
    keep = []
    for c in range(num_classes):
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    order = torch.cat(keep).sort().values.to(part.y.device)
    return Split(part.x[order], part.y[order])


def limit_per_class(
    data: Dataset, *, train: int | None = None, test: int | None = None, seed: int = 0
) -> Dataset:
    """At most ``train`` training (and ``train // 9`` validation) and ``test`` test images per class."""
    if train is None and test is None:
        return data
    val = None if train is None else max(2, train // 9)
    return Dataset(
        name=f"{data.name}[{train},{test}]",
        train=_cap_per_class(data.train, train, data.num_classes, seed),
        val=_cap_per_class(data.val, val, data.num_classes, seed + 1),
        test=_cap_per_class(data.test, test, data.num_classes, seed + 2),
        num_classes=data.num_classes, class_names=data.class_names,
    )


def load_data(
    spec: str,
    *,
    seed: int = 0,
    image_size: int | None = None,
    reduced: bool = False,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    device: str | torch.device | None = None,
) -> Dataset:
    """Load a dataset named on the command line.

    Args:
        spec: ``digits`` (bundled), a path to a ``.npz`` (the generic ``npz``
            loader, e.g. ``/work/shared/data/cifar10_reduced.npz``) or any
            registered loader name (``mnist``, ``kmnist``, ...).
        seed: Seeds reduction and the validation split.
        image_size: Resize square images to this size (digits are rendered at it).
        reduced: The paper's reduced protocol (1,000 / 100 images per class).
        max_train_per_class: Further cap on training images per class (quick runs).
        max_test_per_class: Cap on test images per class.
        device: Where the tensors live.
    """
    if spec == "digits":
        data = datasets.load("digits", seed=seed, reduced=reduced, image_size=image_size or 16)
    elif spec.endswith(".npz"):
        data = datasets.load("npz", path=spec, seed=seed, reduced=reduced)
    else:
        data = datasets.load(spec, seed=seed, reduced=reduced)
    data = limit_per_class(data, train=max_train_per_class, test=max_test_per_class, seed=seed)
    if image_size is not None and data.input_shape[1:] != (image_size, image_size):
        data = resize_dataset(data, image_size)
    return data.to(device) if device is not None else data


# --------------------------------------------------------------------------- settings and command line


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything an experiment script can be told (command line: :func:`experiment_parser`)."""

    dataset: str = "digits"
    reference: str = "hand_a"
    generations: int = 3
    epochs: int = 8
    population: int = 4
    children: int = 2
    storage: str | None = None
    study_name: str | None = None
    device: str | None = None
    quick: bool = False
    workdir: str = "gmsearch_experiments"
    seed: int = 0
    lam: float = 1.0
    image_size: int | None = None
    reference_epochs: int = 30
    baseline_epochs: int | None = None
    refine_epochs: int = 0
    attack_steps: int = 10
    eps: float | None = None
    reduced: bool = False
    max_params: int = 200_000
    max_train_per_class: int | None = None
    max_test_per_class: int | None = None
    source_epochs: int = 15
    source_train_per_class: int | None = None
    test_limit: int | None = None
    ig_steps: int = 50

    @classmethod
    def create(cls, *, quick: bool = False, **given: Any) -> ExperimentSettings:
        """Settings from explicit values; a value left out or None takes the quick or full default."""
        defaults = QUICK if quick else FULL
        values = {**defaults, **{k: v for k, v in given.items() if v is not None}}
        return cls(quick=quick, **values)

    def label(self) -> str:
        """``digits@16px``-style name of the searched data."""
        size = f"@{self.image_size}px" if self.image_size else ""
        return f"{dataset_label(self.dataset)}{size}"


def experiment_parser(description: str) -> argparse.ArgumentParser:
    """The command line every experiment script shares; scripts add their own options.

    ``--quick`` makes a smoke run on a laptop CPU in a few minutes (see :data:`QUICK`).
    """
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="digits",
                   help="digits, a registered dataset name, or a .npz path (e.g. .../cifar10_reduced.npz)")
    p.add_argument("--reference", default="hand_a", help="reference architecture (gmsearch.architectures)")
    p.add_argument("--generations", type=int, default=None, help="generations of the search (total; resumes)")
    p.add_argument("--epochs", type=int, default=None, help="GM training epochs per child (paper: 20)")
    p.add_argument("--population", type=int, default=None, help="population size s (paper: 4-5)")
    p.add_argument("--children", type=int, default=None, help="children per candidate n (paper: 2)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite in --workdir)")
    p.add_argument("--study", dest="study_name", default=None, help="study name (default from dataset/reference)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 8x8 images, 1 generation of 3 x 1 children, 5 epochs, 1 thread")
    p.add_argument("--workdir", default="gmsearch_experiments", help="folder for the database, weights, cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lam", type=float, default=1.0, help="GM weight lambda (eq. 2)")
    p.add_argument("--image-size", type=int, default=None, help="resize images to this size")
    p.add_argument("--reference-epochs", type=int, default=None, help="training epochs of the reference")
    p.add_argument("--baseline-epochs", type=int, default=None,
                   help="epochs of Ref+GM / HE+GM / defenses (default: as many as the NE+GM networks got)")
    p.add_argument("--refine-epochs", type=int, default=0, help="extra GM epochs for NE+GM nets (paper: 1000)")
    p.add_argument("--attack-steps", type=int, default=None, help="PGD steps (budgets: attacks.default_budget)")
    p.add_argument("--eps", type=float, default=None, help="L-inf budget (default: 0.2 grey, 8/255 RGB)")
    p.add_argument("--reduced", action="store_true", help="the paper's reduced protocol (1000/100 per class)")
    p.add_argument("--max-params", type=int, default=None, help="parameter budget of evolved networks")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: 1 with --quick, where small tensors gain nothing from more "
                        "and a shared CPU loses a lot; torch's default otherwise)")
    return p


def settings_from_args(args: argparse.Namespace) -> ExperimentSettings:
    """:class:`ExperimentSettings` from parsed :func:`experiment_parser` arguments."""
    names = {f for f in ExperimentSettings.__dataclass_fields__ if f != "quick"}
    given = {k: v for k, v in vars(args).items() if k in names}
    return ExperimentSettings.create(quick=bool(args.quick), **given)


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
        self.data = load_data(
            settings.dataset, seed=settings.seed, image_size=settings.image_size, reduced=settings.reduced,
            max_train_per_class=settings.max_train_per_class, max_test_per_class=settings.max_test_per_class,
            device=self.device,
        )
        self.log(f"data: {settings.label()} {self.data!r}")
        self.reference = references.get(
            settings.reference, self.data, epochs=settings.reference_epochs, seed=settings.seed,
            device=self.device, cache_dir=self.cache_dir,
        )
        self.log(f"reference: {settings.reference} ({settings.reference_epochs} epochs), "
                 f"test accuracy {100 * (self.reference.clean_acc or 0):.2f}%")
        self._objective: GMObjective | None = None
        self._study: optuna.Study | None = None
        self._reported_reuse = False

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

    def attack_params(self, name: str) -> dict[str, Any]:
        """Budget of attack ``name``: :func:`attacks.default_budget`, with ``--attack-steps`` and ``--eps``.

        L2 budgets are rescaled by ``sqrt(H * W) / 28`` (grey) or ``/ 32`` (RGB)
        so that resized images (16x16 digits) get the same per-pixel budget as
        the 28x28 / 32x32 images the defaults are meant for.
        """
        params = attacks.default_budget(name, in_channels=self.in_channels)
        if name == "pgd_l2" and "eps" in params:
            # The L2 defaults are for 28x28 grey (MNIST) and 32x32 RGB (CIFAR-10) images; keep the same
            # per-pixel size on other image sizes (an L2 ball grows with the square root of the pixel count).
            _, h, w = self.data.input_shape
            side = 28 if self.in_channels == 1 else 32
            scale = math.sqrt(h * w) / side
            params["eps"] = round(params["eps"] * scale, 4)
            params["alpha"] = round(params["alpha"] * scale, 4)
        if "steps" in params:
            params["steps"] = self.settings.attack_steps
        eps = self.settings.eps
        if eps is not None and name in ("pgd_linf", "mi_fgsm", "fgsm"):
            if "alpha" in params:
                params["alpha"] = params["alpha"] * eps / params["eps"]
            params["eps"] = eps
        return params

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
            self._objective = GMObjective(
                self.data, reference=self.reference, attack=self.attack("pgd_linf"), lam=self.settings.lam,
                epochs=self.settings.epochs, device=self.device, cache_dir=self.cache_dir, seed=self.settings.seed,
                artifact_store=self.artifact_dir,
            )
        return self._objective

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (created or resumed)."""
        if self._study is None:
            s = self.settings
            channels, h, _ = self.data.input_shape
            sampler = NicheEvolutionSampler(
                population_size=s.population, n_children=s.children, min_distance=4.0, mutations_per_child=(4, 5),
                epoch_schedule=EpochSchedule(base=s.epochs, step=5, every=10), seed=s.seed,
                budget=mutations.SizeBudget(
                    max_blocks=12, max_params=s.max_params, in_channels=channels,
                    num_classes=self.data.num_classes, image_size=h,
                ),
            )
            self._study = create_study(study_name=self.study_name, storage=self.storage, sampler=sampler)
        return self._study

    def completed_generations(self) -> int:
        """Whole generations the stored study has completed."""
        s = self.settings
        done = sum(1 for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE)
        return max(0, (done - s.population) // (s.population * s.children))

    def search(self, generations: int | None = None) -> optuna.Study:
        """Run or resume the search until the study has ``generations`` generations (default ``--generations``)."""
        s = self.settings
        target = s.generations if generations is None else generations
        study = self.study
        done = sum(1 for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE)
        missing = max(n_trials_for(target, s.population, s.children) - done, 0)
        if missing == 0:
            if not self._reported_reuse:
                self.log(f"study {self.study_name!r}: {done} trials stored, {target} generations done; reusing it")
                self._reported_reuse = True
            return study
        self.log(
            f"search: study {self.study_name!r} in {self.storage}: population {s.population} x {s.children} "
            f"children, {target} generations, {s.epochs} epochs per child; {missing} trials to run"
        )
        objective = self.objective

        def progress(study: optuna.Study, trial: FrozenTrial) -> None:
            if trial.state == TrialState.COMPLETE:
                self.log(
                    f"  trial {trial.number}: fitness {trial.value:.4f} (val clean "
                    f"{trial.user_attrs.get('clean_acc', float('nan')):.4f}, adv "
                    f"{trial.user_attrs.get('adv_acc', float('nan')):.4f}), {trial.user_attrs.get('epochs')} epochs"
                )
            else:
                self.log(f"  trial {trial.number}: {trial.state.name}")

        study.optimize(objective, n_trials=missing, callbacks=[progress])
        return study

    def evolved(self, top: int = 2) -> list[tuple[str, nn.Module, FrozenTrial]]:
        """The ``top`` best candidates of the final population (NE+GM), refined if ``--refine-epochs``.

        Runs or resumes the search first if the study is short of ``--generations``.
        Refinement is :func:`gmsearch.refine` (weights and accuracies stored on
        the study; a candidate already refined for as many epochs is reused).
        """
        study = self.search()
        ranked = _ranked_population(study)[:top]
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
        from optuna.artifacts import download_artifact

        from gmsearch.search.refinement import refine

        epochs = self.settings.refine_epochs
        self.log(f"refining the top {top} candidates for {epochs} GM epochs (stored on the study; reused)")
        results = refine(self.study, self.objective, epochs=epochs, top=top)
        store = self.objective.artifact_store
        assert store is not None
        channels, h, w = self.data.input_shape
        nets: dict[int, nn.Module] = {}
        for result in results:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "refined.pt"
                download_artifact(artifact_store=store, artifact_id=result.weights, file_path=str(path))
                payload = torch.load(path, map_location="cpu", weights_only=True)
            net = build(Genome.from_json(payload["genome"]), in_channels=channels,
                        num_classes=self.data.num_classes, image_size=(h, w))
            net.load_state_dict(payload["state_dict"])
            nets[result.trial] = net.to(self.device).eval()
        return nets

    def network_epochs(self) -> int:
        """Epochs every baseline gets: ``--baseline-epochs``, else what the best NE+GM network got."""
        if self.settings.baseline_epochs is not None:
            return self.settings.baseline_epochs
        ranked = _ranked_population(self.search())
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
                train(net, self.data, reference=self.reference, lam=self.settings.lam, epochs=epochs,
                      device=self.device, seed=seed, ref_grads=self.objective.ref_grads, **options)
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
        """Ref+GM: the reference's architecture trained with GM (cached)."""
        arch = self.settings.reference
        return self.trained("Ref+GM", self.architecture(arch), architecture=arch, epochs=epochs)

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


# --------------------------------------------------------------------------- the tables


def _pct_paper(key: str, label: str) -> list[float | None] | None:
    value = PAPER.get(key, {}).get(label)
    return list(value) if isinstance(value, list) else None


def _eval_rows(exp: Experiment, nets: Mapping[str, nn.Module], adv: AdversarialSet) -> dict[str, EvalResult]:
    return {name: evaluate(net, exp.data, adversarial=adv, reference=exp.reference) for name, net in nets.items()}


def table1(exp: Experiment, *, top: int = 2) -> PaperTable:
    """Table 1: clean and adversarial accuracy of Ref, Ref+GM and the top NE+GM networks."""
    evolved = exp.evolved(top)
    nets: dict[str, nn.Module] = {"Ref.": exp.reference, "Ref.+GM": exp.ref_gm()}
    nets.update({name: net for name, net, _ in evolved})
    adv = exp.adversarial("pgd_linf")
    results = _eval_rows(exp, nets, adv)
    columns = list(nets)
    paper_cols = ["Ref.", "Ref.+GM", "NE+GM 1", "NE+GM 2"]

    def paper(label: str) -> list[float | None]:
        values = _pct_paper("table1", label) or []
        return [values[paper_cols.index(c)] if c in paper_cols and values else None for c in columns]

    rows: list[tuple[str, list[float | None]]] = [
        ("Clean Acc.", [results[c].clean_acc for c in columns]),
        ("Adv. Acc. (L-inf PGD)", [results[c].adv_acc for c in columns]),
        ("Fooling (4.2.2)", [results[c].fooling_rate for c in columns]),
    ]
    return PaperTable(
        key="table1",
        title="Table 1: clean and adversarial accuracy (adversarial examples transferred from the reference)",
        columns=columns, rows=rows,
        paper={"Clean Acc.": paper("Clean Acc."), "Adv. Acc. (L-inf PGD)": paper("Adv. Acc. (L-inf PGD)")},
        notes=[
            f"attack: {adv.attack}; Ref.'s adversarial accuracy is white-box",
            f"NE+GM trials: {', '.join(str(t.number) for _, _, t in evolved)}; baselines trained "
            f"{exp.network_epochs()} epochs",
            f"paper setting: {PAPER['table1']['setting']}",
        ],
        extra={"trials": [t.number for _, _, t in evolved], "eval": {k: v.as_dict() for k, v in results.items()}},
    )


#: Display names of the paper's transfer sources.
SOURCE_NAMES = {"resnet18": "ResNet-18", "vgg11_bn": "VGG", "densenet121": "DenseNet", "squeezenet1_1": "SqueezeNet"}


def table2(
    exp: Experiment,
    *,
    sources: Sequence[str] = ("resnet18", "vgg11_bn", "densenet121", "squeezenet1_1"),
    extra_sources: Mapping[str, nn.Module] | None = None,
) -> tuple[PaperTable, TransferMatrix]:
    """Table 2: adversarial accuracy of Ref, Ref+GM and NE+GM on examples from other source networks.

    Sources are trained independently with plain cross-entropy (cached); the
    reference itself is added as a source, and so are ``extra_sources``.
    """
    (_, ne_gm, trial), = exp.evolved(1)
    targets: dict[str, nn.Module] = {"Ref.": exp.reference, "Ref.+GM": exp.ref_gm(), "NE+GM": ne_gm}
    source_models: dict[str, nn.Module] = {}
    for arch in sources:
        exp.log(f"source {arch}: training ({exp.settings.source_epochs} epochs, cached)")
        source_models[SOURCE_NAMES.get(arch, arch)] = exp.source_model(arch)
    source_models["Reference"] = exp.reference
    source_models.update(extra_sources or {})
    part = exp.test_split()
    exp.log(f"transfer matrix: {len(source_models)} sources x {len(targets)} targets on {len(part)} test images")
    matrix = transfer_matrix(
        source_models, targets, part, attack=exp.attack("pgd_linf"), cache_dir=exp.cache_dir,
        exclude_white_box=True,
    )
    columns = list(targets)
    rows: list[tuple[str, list[float | None]]] = [
        (s, [matrix.cell(s, t) for t in columns]) for s in matrix.sources
    ]
    rows.append(("worst case", list(matrix.worst_case)))
    rows.append(("per-image worst", list(matrix.per_image_worst_case)))
    paper = {s: v for s in matrix.sources if (v := _pct_paper("table2", s)) is not None}
    source_acc = ", ".join(f"{s} {100 * a:.1f}%" for s, a in zip(matrix.sources, matrix.source_clean_acc, strict=True))
    table = PaperTable(
        key="table2",
        title="Table 2: adversarial accuracy on examples transferred from other source networks (rows: source)",
        columns=columns, rows=rows, paper=paper,
        notes=[
            f"attack: {matrix.attack}; {matrix.n_images} test images; Reference->Ref. is white-box "
            "(left out of the worst cases)",
            f"source clean accuracy: {source_acc}",
            "worst case: lowest accuracy over sources; per-image: correct under every source's example",
            f"NE+GM: trial {trial.number}; paper setting: {PAPER['table2']['setting']}",
        ],
        extra={"transfer_matrix": matrix.as_dict()},
    )
    return table, matrix


def _paper_dataset(spec: str) -> str | None:
    name = dataset_label(spec).lower()
    for key, label in (("fashion", "FMNIST"), ("fmnist", "FMNIST"), ("kmnist", "KMNIST"), ("mnist", "MNIST")):
        if key in name:
            return label
    return None


def table3(
    exp: Experiment, *, targets: Sequence[str], reduced: bool = True, epochs: int | None = None
) -> PaperTable:
    """Tables 3 / 7: the best evolved architecture retrained from scratch on other datasets.

    For each target dataset: the reference architecture is trained on it
    (cached) and attacked; Ref+GM and the NE+GM *architecture* (genome of the
    best candidate) are trained from scratch with GM against that reference.

    Args:
        exp: The experiment whose search produced the architecture.
        targets: Dataset specs (names or ``.npz`` paths); missing ones are skipped with a note.
        reduced: Use the reduced protocol on the targets (Table 7; otherwise Table 3).
        epochs: GM epochs on each target (default :meth:`Experiment.network_epochs`).
    """
    (_, _, trial), = exp.evolved(1)
    genome = genome_of(trial)
    epochs = exp.network_epochs() if epochs is None else epochs
    key = "table7" if reduced else "table3"
    columns = ["Ref.", "Ref.+GM", "NE+GM"]
    rows: list[tuple[str, list[float | None]]] = []
    paper: dict[str, list[float | None]] = {}
    notes = []
    done = []
    for spec in targets:
        settings = replace(exp.settings, dataset=spec, reduced=reduced, study_name=f"{exp.study_name}-retrain")
        try:
            target = Experiment(settings, verbose=exp.verbose)
        except (datasets.DatasetNotFoundError, FileNotFoundError) as exc:
            notes.append(f"skipped {spec}: {str(exc).splitlines()[0][:160]}")
            exp.log(f"skipping target {spec}: not available")
            continue
        label = dataset_label(spec)
        ref_gm = target.ref_gm(epochs=epochs)
        ne_gm = target.trained("NE+GM", target.genome_factory(genome), architecture=genome.to_json(), epochs=epochs)
        adv = target.adversarial("pgd_linf")
        res = {name: evaluate(net, target.data, adversarial=adv, reference=target.reference)
               for name, net in {"Ref.": target.reference, "Ref.+GM": ref_gm, "NE+GM": ne_gm}.items()}
        rows.append((f"{label} Clean Acc.", [res[c].clean_acc for c in columns]))
        rows.append((f"{label} Adv. Acc.", [res[c].adv_acc for c in columns]))
        paper_name = _paper_dataset(spec)
        paper_rows = PAPER[key].get(paper_name, {}) if paper_name else {}
        if paper_rows:
            paper[f"{label} Clean Acc."] = list(paper_rows["Clean Acc."])
            paper[f"{label} Adv. Acc."] = list(paper_rows["Adv. Acc. (L-inf PGD)"])
        notes.append(f"{label}: {target.data!r}; attack {adv.attack}")
        done.append(label)
    if not done:
        raise RuntimeError(
            "no target dataset could be loaded: " + "; ".join(notes) + ". Pass --targets with .npz paths, e.g. "
            "--targets /path/to/mnist.npz"
        )
    notes.append(f"NE+GM architecture: trial {trial.number} of {exp.study_name!r} ({genome.summary()})")
    notes.append(f"every network trained {epochs} epochs on each target; paper setting: {PAPER[key]['setting']}")
    return PaperTable(
        key=key,
        title=f"Table {'7' if reduced else '3'}: the evolved architecture retrained on other datasets",
        columns=columns, rows=rows, paper=paper, notes=notes,
        extra={"targets": done, "genome": genome.to_json(), "trial": trial.number},
    )


def table4(exp: Experiment, *, hand: str = "hand_b", top: int = 2) -> PaperTable:
    """Table 4: reduced data with the hand-engineered baseline: Ref, Ref+GM, HE+GM, NE+GM 1/2."""
    evolved = exp.evolved(top)
    nets: dict[str, nn.Module] = {"Ref.": exp.reference, "Ref.+GM": exp.ref_gm(), "HE+GM": exp.hand_gm(hand)}
    nets.update({name: net for name, net, _ in evolved})
    adv = exp.adversarial("pgd_linf")
    results = _eval_rows(exp, nets, adv)
    columns = list(nets)
    return PaperTable(
        key="table4",
        title=f"Table 4: reduced-data baselines with the hand-engineered network {hand} (HE+GM)",
        columns=columns,
        rows=[
            ("Clean Acc.", [results[c].clean_acc for c in columns]),
            ("Adv. Acc. (L-inf PGD)", [results[c].adv_acc for c in columns]),
        ],
        notes=[
            f"attack: {adv.attack}; Ref.'s adversarial accuracy is white-box; baselines trained "
            f"{exp.network_epochs()} epochs",
            f"paper: {PAPER['table4']['setting']}",
        ],
        extra={"eval": {k: v.as_dict() for k, v in results.items()}, "trials": [t.number for _, _, t in evolved]},
    )


def table5(
    exp: Experiment,
    *,
    attack_names: Sequence[str] = ("pgd_linf", "pgd_l2", "fgsm"),
    fgsm_eps: float | None = None,
    hand: str = "hand_b",
    top: int = 2,
) -> PaperTable:
    """Table 5: fooling rate (paper 4.2.2) under L-inf PGD, L2 PGD and FGSM from the reference.

    Args:
        exp: The experiment.
        attack_names: Registered attacks, each with :meth:`Experiment.attack_params`.
        fgsm_eps: FGSM budget (the paper raised FGSM's eps without saying to
            what; default: the L-inf PGD eps).
        hand: The hand-engineered baseline.
        top: NE+GM networks.
    """
    evolved = exp.evolved(top)
    nets: dict[str, nn.Module] = {"Ref.+GM": exp.ref_gm(), "HE+GM": exp.hand_gm(hand)}
    nets.update({name: net for name, net, _ in evolved})
    columns = list(nets)
    labels = {"pgd_linf": "L-inf PGD", "pgd_l2": "L2 PGD", "fgsm": "FGSM"}
    rows: list[tuple[str, list[float | None]]] = []
    paper: dict[str, list[float | None]] = {}
    notes = []
    for name in attack_names:
        atk = exp.attack(name, **({"eps": fgsm_eps} if name == "fgsm" and fgsm_eps is not None else {}))
        adv = exp.adversarial(atk)
        label = labels.get(name, name)
        rows.append((label, [evaluate(net, exp.data, adversarial=adv, reference=exp.reference).fooling_rate
                             for net in nets.values()]))
        if (values := _pct_paper("table5", label)) is not None:
            paper[label] = values[: len(columns)]
        notes.append(f"{label}: {adv.attack}")
    notes.append("fooling rate 4.2.2: among test images both the reference and the network classify correctly, "
                 "the share whose adversarial version (from the reference) fools the network; lower is better")
    notes.append(f"paper setting: {PAPER['table5']['setting']}")
    return PaperTable(key="table5", title="Table 5: fooling rate under three attacks (lower is better)",
                      columns=columns, rows=rows, paper=paper, notes=notes)


def table6(
    exp: Experiment,
    *,
    hand: str = "hand_b",
    jpeg_quality: int = 75,
    bilateral: Mapping[str, Any] | None = None,
    free_replays: int = 4,
) -> PaperTable:
    """Table 6: fooling rate (paper 4.2.3) of the GM networks and of the reference with standard defenses.

    The adversarial examples are L-inf PGD from the reference on the test
    images it classifies correctly, the same for every network. JPEG and the
    bilateral filter preprocess the reference's input; free and fast
    adversarial training train a fresh copy of the reference's architecture
    (eps = the attack's eps; free AT runs ``ceil(E / replays)`` passes with
    ``replays`` replays, fast AT ``E`` epochs, ``E`` = :meth:`Experiment.network_epochs`).

    Args:
        exp: The experiment.
        hand: The hand-engineered baseline (HE+GM).
        jpeg_quality: JPEG quality (Guo et al. use 75).
        bilateral: :class:`~gmsearch.defenses.BilateralDefense` settings; the
            default range sigma (``sigma_color`` None) is ``max(0.1, 2 eps)``:
            a filter whose range sigma is below the perturbation's size keeps
            the perturbation (edges are preserved by design).
        free_replays: Minibatch replays of free adversarial training.
    """
    (_, ne_gm, trial), = exp.evolved(1)
    epochs = exp.network_epochs()
    atk = exp.attack("pgd_linf")
    eps = float(atk.eps)
    arch = exp.settings.reference
    filt = {"kernel_size": 5, "sigma_space": 1.0, "sigma_color": None, **(bilateral or {})}
    if filt["sigma_color"] is None:
        filt["sigma_color"] = round(max(0.1, 2 * eps), 4)
    nets: dict[str, nn.Module] = {
        "Ref.": exp.reference, "Ref.+GM": exp.ref_gm(), "HE+GM": exp.hand_gm(hand), "NE+GM": ne_gm,
        "JPEG Comp.": JPEGDefense(exp.reference, quality=jpeg_quality),
        "Bilateral Filt.": BilateralDefense(exp.reference, **filt),
        "A.T. (Free)": exp.trained(
            "AT-free", exp.architecture(arch), architecture=arch, method="free_at",
            epochs=max(1, math.ceil(epochs / free_replays)), eps=eps, replays=free_replays,
        ),
        "A.T. (Fast)": exp.trained(
            "AT-fast", exp.architecture(arch), architecture=arch, method="fast_at", epochs=epochs, eps=eps,
        ),
    }
    adv = exp.adversarial(atk)
    x, y = exp.data.test.x, exp.data.test.y
    ref_pred = predict(exp.reference, x).to(y.device)
    fooling: dict[str, float] = {}
    clean: dict[str, float] = {}
    for name, net in nets.items():
        adv_pred = predict(net, adv.x).to(y.device)
        fooling[name] = fooling_rate_from_predictions(
            None, adv_pred, y, reference_pred=ref_pred, definition="reference"
        )
        clean[name] = (predict(net, x).to(y.device) == y).float().mean().item()
    columns = list(nets)
    paper6 = PAPER["table6"]
    return PaperTable(
        key="table6",
        title="Table 6: fooling rate 4.2.3 of GM networks and of the reference with defenses (lower is better)",
        columns=columns,
        rows=[("L-inf PGD (fooling)", [fooling[c] for c in columns]), ("clean acc.", [clean[c] for c in columns])],
        paper={"L-inf PGD (fooling)": [paper6[c] for c in columns]},
        wrap=4,
        notes=[
            f"attack: {adv.attack} on the {int((ref_pred == y).sum())} test images the reference gets right "
            "(the same examples for every column)",
            f"defenses: JPEG quality {jpeg_quality}; bilateral {filt}; A.T. eps {eps:.4g} (free: {free_replays} "
            f"replays, {max(1, math.ceil(epochs / free_replays))} passes; fast: alpha 1.25 eps, {epochs} epochs)",
            f"paper setting: {paper6['setting']}",
        ],
        extra={
            "fooling_rate_reference": fooling, "clean_acc": clean, "jpeg_quality": jpeg_quality,
            "bilateral": filt, "at_eps": eps, "free_replays": free_replays, "epochs": epochs,
            "ne_gm_trial": trial.number,
        },
    )


def masking_checks(exp: Experiment, net: nn.Module, *, surrogate_arch: str = "hand_b") -> MaskingReport:
    """:func:`~gmsearch.evaluation.gradient_masking_checks` on ``net`` with an independently trained surrogate."""
    surrogate = references.get(
        surrogate_arch, exp.data, epochs=exp.settings.reference_epochs, seed=exp.settings.seed + 1000,
        device=exp.device, cache_dir=exp.cache_dir,
    )
    steps = max(5, exp.settings.attack_steps)
    limit = exp.settings.test_limit or 500
    return gradient_masking_checks(
        net, exp.data, steps=steps, surrogate=surrogate, limit=limit, cache_dir=exp.cache_dir, seed=exp.settings.seed
    )


def fig3(
    exp: Experiment, *, n_show: int = 4, n_distance: int = 100, out_dir: str | Path | None = None
) -> tuple[PaperTable, dict[str, Path]]:
    """Fig. 3: integrated gradients of Ref, Ref+GM and NE+GM, and their total pixel distance to Ref.

    Maps are computed for the first ``n_distance`` test images all three
    networks classify correctly (for the true label); the distance is
    averaged over them and the first ``n_show`` are drawn. Writes
    ``fig3_attributions.html`` (plotly, self-contained) and ``.png`` (matplotlib).
    """
    from gmsearch.evaluation.attribution import (
        attribution_figure,
        integrated_gradients,
        total_pixel_distance,
        write_attribution_png,
    )

    (_, ne_gm, trial), = exp.evolved(1)
    nets = {"Ref.": exp.reference, "Ref.+GM": exp.ref_gm(), "NE+GM": ne_gm}
    x, y = exp.data.test.x, exp.data.test.y
    correct = torch.ones_like(y, dtype=torch.bool)
    for net in nets.values():
        correct &= predict(net, x).to(y.device) == y
    idx = torch.nonzero(correct).flatten()[:n_distance]
    if len(idx) == 0:
        raise RuntimeError("no test image is classified correctly by all three networks")
    xs, ys = x[idx], y[idx]
    steps = exp.settings.ig_steps
    maps = {name: integrated_gradients(net, xs, ys, steps=steps, internal_batch_size=512) for name, net in nets.items()}
    distances = {name: total_pixel_distance(maps[name], maps["Ref."]) for name in nets if name != "Ref."}
    out = Path(out_dir) if out_dir is not None else exp.workdir
    out.mkdir(parents=True, exist_ok=True)
    shown = {k: v[:n_show] for k, v in maps.items()}
    labels = [f"label {exp.data.class_names[int(c)]}" for c in ys[:n_show]]
    fig = attribution_figure(xs[:n_show], shown, reference="Ref.", labels=labels,
                             title=f"Integrated gradients ({exp.settings.label()}, {steps} steps)")
    html = out / "fig3_attributions.html"
    fig.write_html(str(html), include_plotlyjs=True)
    files = {"html": html}
    try:
        files["png"] = write_attribution_png(out / "fig3_attributions.png", xs[:n_show], shown, reference="Ref.",
                                             labels=labels)
    except ImportError as exc:  # matplotlib comes with captum, but don't fail the figure on it
        exp.log(f"no PNG written: {exc}")
    table = PaperTable(
        key="fig3",
        title="Fig. 3: total pixel distance of integrated-gradient maps to the reference's (higher: more misaligned)",
        columns=["Ref.+GM", "NE+GM"],
        rows=[("distance", [distances["Ref.+GM"], distances["NE+GM"]])],
        percent=False,
        paper={"distance": [PAPER["fig3"]["Ref.+GM"], PAPER["fig3"]["NE+GM"]]},
        notes=[
            f"distance: mean |a - b| per pixel of maps normalised to [-1, 1] per image, averaged over {len(idx)} "
            "test images all three networks get right (range 0..2)",
            "the paper's distances (one CIFAR-10 image) use a scale it does not define: compare the ordering",
            f"NE+GM: trial {trial.number}; IG: {steps} steps from a black baseline, target = true label",
            f"figure: {html}" + (f" and {files['png']}" if "png" in files else ""),
        ],
        extra={
            "distances": distances, "n_images": len(idx), "ig_steps": steps, "figure_html": str(html),
            "shown": {"images": [round(float(v), 3) for v in xs[:n_show].flatten().tolist()],
                      "shape": list(xs[:n_show].shape), "labels": [int(c) for c in ys[:n_show]],
                      "maps": {k: [round(float(v), 3) for v in m.flatten().tolist()] for k, m in shown.items()}},
        },
    )
    return table, files
