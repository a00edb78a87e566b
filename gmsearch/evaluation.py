"""Clean accuracy, adversarial accuracy and fooling rate.

Fooling rate follows the paper (section 4.2.2): among the images that both
the reference and the tested network classify correctly when clean, the
share whose adversarial version the tested network misclassifies. Without a
reference it falls back to the images the tested network gets right.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn


@torch.no_grad()
def predict(net: nn.Module, x: Tensor, *, batch_size: int = 1024) -> Tensor:
    """Predicted labels for ``x`` (net in eval mode, its mode restored)."""
    was_training = net.training
    net.eval()
    try:
        device = next(net.parameters()).device if any(True for _ in net.parameters()) else x.device
        preds = [net(x[i : i + batch_size].to(device)).argmax(dim=1) for i in range(0, len(x), batch_size)]
    finally:
        net.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def accuracy(net: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1024) -> float:
    """Share of ``x`` that ``net`` labels ``y``."""
    if len(x) == 0:
        return float("nan")
    pred = predict(net, x, batch_size=batch_size)
    return (pred == y.to(pred.device)).float().mean().item()


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one network on one split."""

    clean_acc: float
    adv_acc: float | None = None
    fooling_rate: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fooling_rate(
    net: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, reference: nn.Module | None = None
) -> float:
    """Paper 4.2.2: share of adversarial images that fool ``net``, among clean images
    correct for both ``net`` and ``reference`` (or ``net`` alone)."""
    pred = predict(net, x)
    y = y.to(pred.device)
    keep = pred == y
    if reference is not None:
        keep &= predict(reference, x).to(pred.device) == y
    if not bool(keep.any()):
        return float("nan")
    adv_pred = predict(net, x_adv[keep.to(x_adv.device)])
    return (adv_pred != y[keep]).float().mean().item()


def evaluate(
    net: nn.Module,
    data: Any,
    *,
    adversarial: Any = None,
    split: str = "test",
    reference: nn.Module | None = None,
) -> EvalResult:
    """Clean accuracy on ``data.<split>``, and with ``adversarial`` (an adversarial
    set made from that split) adversarial accuracy and fooling rate."""
    part = getattr(data, split) if hasattr(data, split) else data
    clean = accuracy(net, part.x, part.y)
    if adversarial is None:
        return EvalResult(clean_acc=clean)
    if adversarial.x.shape != part.x.shape:
        raise ValueError(
            f"adversarial set has shape {tuple(adversarial.x.shape)} but the {split} split has "
            f"{tuple(part.x.shape)}; was it made from another split?"
        )
    adv = accuracy(net, adversarial.x, adversarial.y)
    fool = fooling_rate(net, part.x, adversarial.x, part.y, reference=reference)
    return EvalResult(clean_acc=clean, adv_acc=adv, fooling_rate=fool)
