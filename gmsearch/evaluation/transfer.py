"""The transfer matrix (paper Table 2): several target networks scored on the adversarial sets of
several source models, with worst-case columns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gmsearch.evaluation.metrics import fooling_rate_from_predictions, predict, split_of
from gmsearch.evaluation.tables import percent, text_table


def _inner(model: nn.Module) -> nn.Module:
    return getattr(model, "model", model)  # a FrozenReference wraps its network


@dataclass(frozen=True)
class TransferMatrix:
    """Adversarial accuracy of every target network on every source's adversarial set.

    Attributes:
        sources: Source names (adversarial examples are made from each).
        targets: Target names (the networks scored).
        adv_acc: ``adv_acc[t][s]``: accuracy of target ``t`` on the examples of source ``s``.
        fooling_rate: ``fooling_rate[t][s]``: paper 4.2.3 fooling rate with
            source ``s`` as the reference (among images ``s`` gets right).
        clean_acc: Clean accuracy of each target.
        source_clean_acc: Clean accuracy of each source.
        worst_case: Per target, the lowest adversarial accuracy over sources.
        per_image_worst_case: Per target, the share of images it labels
            correctly under *every* source's adversarial version (an attacker
            who picks the best source per image); never above ``worst_case``.
        white_box: ``white_box[t][s]``: the source is the target itself.
        attack: The attack and its budget.
        split: The split the examples were made from.
        n_images: Images in that split.
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    adv_acc: tuple[tuple[float, ...], ...]
    fooling_rate: tuple[tuple[float, ...], ...]
    clean_acc: tuple[float, ...]
    source_clean_acc: tuple[float, ...]
    worst_case: tuple[float, ...]
    per_image_worst_case: tuple[float, ...]
    white_box: tuple[tuple[bool, ...], ...]
    attack: str
    split: str
    n_images: int

    def cell(self, source: str, target: str) -> float:
        """Adversarial accuracy of ``target`` on ``source``'s examples."""
        return self.adv_acc[self.targets.index(target)][self.sources.index(source)]

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable content (e.g. for a study user attr)."""
        return {k: (list(map(list, v)) if k in {"adv_acc", "fooling_rate", "white_box"} else v)
                for k, v in asdict(self).items()}

    def to_text(self, *, title: str | None = None) -> str:
        """A readable table: one row per target, one column per source, then the worst cases.

        White-box cells (the source is the target itself) are marked ``*``.
        """
        rows = [
            [
                target, percent(self.clean_acc[t]),
                *(percent(a) + ("*" if wb else " ") for a, wb in zip(self.adv_acc[t], self.white_box[t], strict=True)),
                percent(self.worst_case[t]), percent(self.per_image_worst_case[t]),
            ]
            for t, target in enumerate(self.targets)
        ]
        notes = ["* white-box: the source is the target itself"] if any(any(r) for r in self.white_box) else []
        notes.append("worst: lowest accuracy over sources; per-image: correct under every source's example")
        table = text_table(
            ["target", "clean", *(f"{s} " for s in self.sources), "worst", "per-image"], rows, notes=notes,
            title=f"adversarial accuracy of each target on each source's examples; {self.attack}; "
                  f"{self.split} split, {self.n_images} images",
        )
        return f"{title}\n{table}" if title else table

    def __str__(self) -> str:
        return self.to_text()


def transfer_matrix(
    sources: Mapping[str, nn.Module],
    targets: Mapping[str, nn.Module],
    data: Any,
    *,
    attack: Any = "pgd_linf",
    attack_params: Mapping[str, Any] | None = None,
    split: str = "test",
    cache_dir: str | Path | None = None,
    exclude_white_box: bool = False,
) -> TransferMatrix:
    """Score every target on adversarial examples made from every source (paper Table 2).

    Each source's adversarial set is made once with ``attack`` and cached
    through :func:`gmsearch.attacks.adversarial_set` (keyed by the source's
    weights, the split's content and the attack), so re-running with more
    targets costs only their forward passes.

    Args:
        sources: Models the attacker has, by name: e.g. resnet18, vgg11_bn,
            densenet121, squeezenet1_1 (:func:`gmsearch.references.get`), the
            reference, or any user model. All on the split's device.
        targets: Networks under test, by name.
        data: A dataset bundle or one split (``.x``, ``.y``).
        attack: An :class:`~gmsearch.attacks.Attack` or a registered name.
        attack_params: Parameters of a named attack (default: none, the
            attack's own defaults; see :func:`gmsearch.attacks.default_budget`).
        split: Which split of ``data``.
        cache_dir: Where adversarial sets are cached (None: not cached).
        exclude_white_box: Leave white-box cells (a source that is the
            target itself) out of the worst-case columns.

    Returns:
        A :class:`TransferMatrix`; ``print(matrix)`` shows it as a table.

    Example:
        >>> import torch
        >>> from gmsearch.datasets import Split
        >>> nets = {n: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)) for n in "ab"}
        >>> part = Split(torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
        >>> m = transfer_matrix(nets, nets, part, attack="fgsm", attack_params={"eps": 0.1})
        >>> len(m.adv_acc), len(m.adv_acc[0]), len(m.worst_case)
        (2, 2, 2)
    """
    from gmsearch import attacks  # attacks needs no evaluation code; imported here to keep import order light

    if not sources or not targets:
        raise ValueError(f"need at least one source and one target, got {len(sources)} and {len(targets)}")
    part = split_of(data, split)
    x, y = part.x, part.y
    atk = attacks.create(attack, **dict(attack_params or {})) if isinstance(attack, str) else attack
    if attack_params and not isinstance(attack, str):
        raise ValueError("attack_params only apply when attack is given by name")
    target_names = tuple(targets)
    source_names = tuple(sources)
    clean_pred = {t: predict(net, x).to(y.device) for t, net in targets.items()}
    adv_acc = [[0.0] * len(source_names) for _ in target_names]
    fool = [[0.0] * len(source_names) for _ in target_names]
    white = [[False] * len(source_names) for _ in target_names]
    survived = {t: torch.ones_like(y, dtype=torch.bool) for t in target_names}
    source_clean = []
    for s, source in enumerate(sources.values()):
        adv = attacks.adversarial_set(source, x, y, atk, cache_dir=cache_dir, tag=f"{split}-transfer")
        source_pred = predict(source, x).to(y.device)
        source_clean.append((source_pred == y).float().mean().item())
        for t, target_name in enumerate(target_names):
            target = targets[target_name]
            adv_pred = predict(target, adv.x).to(y.device)
            correct = adv_pred == y
            adv_acc[t][s] = correct.float().mean().item()
            fool[t][s] = fooling_rate_from_predictions(
                None, adv_pred, y, reference_pred=source_pred, definition="reference"
            )
            white[t][s] = _inner(source) is _inner(target)
            if not (exclude_white_box and white[t][s]):
                survived[target_name] &= correct
    worst = []
    for t in range(len(target_names)):
        counted = [adv_acc[t][s] for s in range(len(source_names)) if not (exclude_white_box and white[t][s])]
        worst.append(min(counted) if counted else float("nan"))
    return TransferMatrix(
        sources=source_names,
        targets=target_names,
        adv_acc=tuple(tuple(r) for r in adv_acc),
        fooling_rate=tuple(tuple(r) for r in fool),
        clean_acc=tuple((clean_pred[t] == y).float().mean().item() for t in target_names),
        source_clean_acc=tuple(source_clean),
        worst_case=tuple(worst),
        per_image_worst_case=tuple(survived[t].float().mean().item() for t in target_names),
        white_box=tuple(tuple(r) for r in white),
        attack=atk.describe(),
        split=split,
        n_images=len(y),
    )


