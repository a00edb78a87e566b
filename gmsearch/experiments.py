"""The paper's baseline table: Ref, Ref+GM and NE+GM on the held-out test split.

- **Ref**: the reference itself (its adversarial accuracy is white-box,
  since the adversarial examples are made from it).
- **Ref+GM**: the reference's architecture trained from scratch with GM
  against the reference.
- **NE+GM**: the best evolved networks of the final population, with the
  weights their trials saved (nothing is retrained).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import optuna
import torch
from torch import nn

from gmsearch.evaluation import evaluate
from gmsearch.objective import GMObjective, load_trial_model
from gmsearch.sampler import population
from gmsearch.training import train


@dataclass(frozen=True)
class Row:
    """One line of a results table."""

    name: str
    clean_acc: float
    adv_acc: float
    fooling_rate: float | None = None
    detail: str = ""


def fresh_copy(model: nn.Module, *, seed: int) -> nn.Module:
    """An untrained network with ``model``'s architecture (parameters re-initialised)."""
    torch.manual_seed(seed)
    net = copy.deepcopy(model)
    for module in net.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    for p in net.parameters():
        p.requires_grad_(True)
    return net.train()


def _row(name: str, net: nn.Module, objective: GMObjective, detail: str = "") -> Row:
    result = evaluate(
        net, objective.data, adversarial=objective.adversarial_test, split="test", reference=objective.reference
    )
    assert result.adv_acc is not None
    return Row(name, result.clean_acc, result.adv_acc, result.fooling_rate, detail)


def reference_row(objective: GMObjective) -> Row:
    """The reference on the test split (adversarial accuracy is white-box)."""
    return _row("Ref", objective.reference, objective, detail="white-box")


def reference_gm_row(objective: GMObjective, *, epochs: int, seed: int = 1) -> Row:
    """The reference's architecture trained from scratch with GM against the reference."""
    ref_model = getattr(objective.reference, "model", objective.reference)
    net = fresh_copy(ref_model, seed=seed)
    train(
        net, objective.data, reference=objective.reference, lam=objective.lam, epochs=epochs,
        batch_size=objective.batch_size, lr=objective.lr, loss=objective.loss,
        device=objective.device, seed=seed, ref_grads=objective.ref_grads,
    )
    return _row("Ref+GM", net, objective, detail=f"{epochs} epochs")


def evolved_rows(study: optuna.Study, objective: GMObjective, *, top: int = 1) -> list[Row]:
    """The ``top`` best candidates of the final population (NE+GM), by validation fitness."""
    candidates = [t for t in population(study) if t.values]
    candidates.sort(key=lambda t: tuple(t.values), reverse=True)
    rows = []
    for i, trial in enumerate(candidates[:top], start=1):
        net = load_trial_model(trial, objective.artifact_store, objective.data, device=objective.device)
        name = "NE+GM" if top == 1 else f"NE+GM {i}"
        rows.append(_row(name, net, objective, detail=f"trial {trial.number}"))
    return rows


def format_table(rows: list[Row], *, title: str = "") -> str:
    """A plain-text table: name, clean accuracy, adversarial accuracy, fooling rate."""
    lines = [title] if title else []
    lines.append(f"{'network':<10} {'clean acc':>10} {'adv acc':>10} {'fooling':>10}  detail")
    for r in rows:
        fool = f"{100 * r.fooling_rate:9.2f}%" if r.fooling_rate is not None else f"{'-':>10}"
        lines.append(f"{r.name:<10} {100 * r.clean_acc:9.2f}% {100 * r.adv_acc:9.2f}% {fool}  {r.detail}")
    return "\n".join(lines)
