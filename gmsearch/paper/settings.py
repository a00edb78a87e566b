"""What an experiment is told: the paper's numbers, the quick and full presets, the command line,
and the paper-layout table (:class:`PaperTable`)."""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gmsearch import config, pipeline
from gmsearch.data import Dataset
from gmsearch.evaluation.tables import text_table

logger = logging.getLogger(__name__)

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

#: The paper's budget (section 4): what its bracketed numbers cost.
PAPER_BUDGET = (
    "population 4-5 x 2 children, 50 generations, 20 epochs per child (+5 every 10 generations), "
    "1,000 refinement epochs"
)

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
    "max_blocks": 12,
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
    "max_blocks": 12,
    "max_train_per_class": None,
    "max_test_per_class": None,
    "source_epochs": 15,
    "source_train_per_class": None,
    "test_limit": None,
    "ig_steps": 50,
}


# --------------------------------------------------------------------------- rows (quickstart) and tables


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
        budget: The search and training budget that produced the numbers, printed under the title
            with the paper's own budget beside it (see :data:`PAPER_BUDGET`).
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
    budget: str = ""

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

        def cell(value: float | None, paper: float | None) -> str:
            shown = None if value is None or not math.isfinite(value) else (100 * value if self.percent else value)
            text = "-" if shown is None else f"{shown:.2f}{unit}" if self.percent else f"{shown:.3f}"
            if paper is not None:
                text += f" [{paper:.2f}{unit}]" if self.percent else f" [{paper:.3f}]"
            return text

        cells = []
        for label, values in self.rows:
            paper = list(self.paper.get(label) or [])[: len(values)]
            paper += [None] * (len(values) - len(paper))
            cells.append((label, [cell(v, p) for v, p in zip(values, paper, strict=True)]))
        step = self.wrap or max(len(self.columns), 1)
        blocks = [
            text_table(["", *self.columns[lo : lo + step]], [[label, *row[lo : lo + step]] for label, row in cells])
            for lo in range(0, len(self.columns), step)
        ]
        notes = ["[...] the paper's number; it was measured on the paper's data (see the setting below)"] * with_paper
        budget = [f"budget: {self.budget} [paper: {PAPER_BUDGET}]"] if self.budget else []
        return "\n".join([self.title, *budget, *blocks, *notes, *self.notes])

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
    data: dict[str, Any] = {"name": spec, "reduced": reduced}
    for key, value in (("image_size", image_size), ("max_train_per_class", max_train_per_class),
                       ("max_test_per_class", max_test_per_class)):
        if value is not None:
            data[key] = value
    return pipeline.load_data(config.parse({"seed": seed, "data": data}), device=device)


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
    max_blocks: int = 12
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


