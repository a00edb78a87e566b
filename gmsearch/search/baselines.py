"""The baseline table on the test split: Ref (white-box), Ref+GM (the reference's architecture trained
with GM) and the best evolved networks (NE+GM), with both fooling rates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
import torch
from torch import nn

from gmsearch.data import Dataset
from gmsearch.evaluation import evaluate
from gmsearch.evaluation.tables import percent, text_table
from gmsearch.nets import architectures, references
from gmsearch.search.objective import GMObjective, load_trial_model
from gmsearch.search.selection import ranked_population
from gmsearch.training.defenses import fresh_copy
from gmsearch.training.loop import train


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


def reference_architecture(reference: nn.Module, data: Dataset, *, seed: int) -> nn.Module:
    """A fresh, untrained network of ``reference``'s architecture, initialised under ``seed``.

    The one Ref+GM builder (the quickstart and the paper scripts): a zoo
    architecture is built by its own factory, so torchvision networks get
    torchvision's initialisation; a checkpoint reference (``arch@file``) is
    built as its ``arch``; any other module is copied with every layer reset.
    """
    torch.manual_seed(seed)
    name = str(getattr(reference, "name", "")).split("@", 1)[0]
    if name in architectures.names():
        return references.build_architecture(name, data)
    return fresh_copy(reference, seed=seed)


def train_with_gm(net: nn.Module, objective: GMObjective, *, epochs: int, seed: int, **options: Any) -> None:
    """Train ``net`` in place with CE + lam * GM against the objective's reference, as its children train.

    The objective's lam, loss, batch size, learning rate, device, GM BatchNorm
    mode and cached reference gradients; ``options`` are more of
    :func:`~gmsearch.training.loop.train`'s arguments.
    """
    train(
        net, objective.data, reference=objective.gm_references, lam=objective.lam, epochs=epochs,
        batch_size=objective.batch_size, lr=objective.lr, loss=objective.loss,
        device=objective.device, seed=seed, ref_grads=objective.ref_grads, gm_batchnorm=objective.gm_batchnorm,
        **options,
    )


def reference_gm_row(objective: GMObjective, *, epochs: int, seed: int = 1) -> Row:
    """The reference's architecture trained from scratch with GM against the reference."""
    net = reference_architecture(objective.reference, objective.data, seed=seed)
    train_with_gm(net, objective, epochs=epochs, seed=seed)
    return _row("Ref+GM", net, objective, detail=f"{epochs} epochs")


def evolved_rows(study: optuna.Study, objective: GMObjective, *, top: int = 1) -> list[Row]:
    """The ``top`` best candidates of the final population (NE+GM), by validation fitness."""
    rows = []
    for i, trial in enumerate(ranked_population(study)[:top], start=1):
        net = load_trial_model(trial, objective.artifact_store, objective.data, device=objective.device)
        name = "NE+GM" if top == 1 else f"NE+GM {i}"
        rows.append(_row(name, net, objective, detail=f"trial {trial.number}"))
    return rows


def format_table(rows: list[Row], *, title: str = "") -> str:
    """A plain-text table: name, clean accuracy, adversarial accuracy, fooling rate (4.2.2)."""
    cells = [[r.name, percent(r.clean_acc), percent(r.adv_acc), percent(r.fooling_rate), r.detail] for r in rows]
    return text_table(["network", "clean acc", "adv acc", "fooling", "detail"], cells, left=(0, 4), title=title or None)
