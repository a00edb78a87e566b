"""Clean accuracy, adversarial accuracy, fooling rates, transfer matrices and gradient-masking checks.

Metrics of one network on one split (:func:`evaluate`):

- **clean accuracy**: share of clean images labelled correctly;
- **adversarial accuracy**: share of adversarial images labelled correctly;
- **fooling rate, section 4.2.2** (``definition="both"``): among the images
  that *both* the reference and the tested network classify correctly when
  clean, the share whose adversarial version the tested network
  misclassifies. Each network is scored on its own subset of images.
  Without a reference it falls back to the images the tested network gets
  right;
- **fooling rate, section 4.2.3** (``definition="reference"``): among the
  images the *reference alone* classifies correctly, the share whose
  adversarial version the tested network misclassifies. The subset, and so
  the adversarial examples, are the same for every network tested, which is
  what lets the paper score input filters (JPEG, bilateral) that cannot be
  asked which clean images they "get right" separately from the reference;
- **attack success rate**: among the images the tested network classifies
  correctly when clean, the share its adversarial version misclassifies (the
  usual untargeted definition; equal to the 4.2.2 fooling rate without a
  reference).

Adversarial examples are made per image (the attacks are chunk independent),
so generating them for the whole split and then selecting a subset gives
exactly the examples the paper generates for that subset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

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


#: The two fooling-rate definitions of the paper: section 4.2.2 ("both") and 4.2.3 ("reference").
FoolingDefinition = Literal["both", "reference"]


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one network on one split.

    Attributes:
        clean_acc: Accuracy on the clean images.
        adv_acc: Accuracy on the adversarial images (None without an adversarial set).
        fooling_rate: Paper 4.2.2 fooling rate (images correct for both the
            reference and the network; the network alone without a reference).
        fooling_rate_reference: Paper 4.2.3 fooling rate (images correct for
            the reference only); None without a reference.
        attack_success_rate: Among images the network gets right when clean,
            the share its adversarial version gets wrong.
    """

    clean_acc: float
    adv_acc: float | None = None
    fooling_rate: float | None = None
    fooling_rate_reference: float | None = None
    attack_success_rate: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _share_fooled(keep: Tensor, adv_pred: Tensor, y: Tensor) -> float:
    if not bool(keep.any()):
        return float("nan")
    return (adv_pred[keep] != y[keep]).float().mean().item()


def fooling_rate_from_predictions(
    pred: Tensor | None,
    adv_pred: Tensor,
    y: Tensor,
    *,
    reference_pred: Tensor | None = None,
    definition: FoolingDefinition = "both",
) -> float:
    """Fooling rate from predicted labels (the arithmetic behind :func:`fooling_rate`).

    Args:
        pred: The tested network's labels of the clean images (unused, may be
            None, for ``definition="reference"``).
        adv_pred: Its labels of the adversarial images, aligned with ``pred``.
        y: True labels.
        reference_pred: The reference's labels of the clean images.
        definition: ``"both"`` (paper 4.2.2: images correct for the network and
            the reference, or the network alone when ``reference_pred`` is None)
            or ``"reference"`` (paper 4.2.3: images correct for the reference).

    Returns:
        The share of the kept images whose adversarial label is wrong; NaN when no image is kept.

    Example:
        >>> y = torch.tensor([0, 1, 2, 3])
        >>> fooling_rate_from_predictions(torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 0]), y,
        ...                               reference_pred=torch.tensor([0, 1, 0, 3]))
        0.5
    """
    if definition == "both":
        if pred is None:
            raise ValueError("definition='both' needs the network's clean predictions (pred)")
        keep = pred == y
        if reference_pred is not None:
            keep &= reference_pred == y
    elif definition == "reference":
        if reference_pred is None:
            raise ValueError("definition='reference' (paper 4.2.3) needs the reference's predictions")
        keep = reference_pred == y
    else:
        raise ValueError(f"definition must be 'both' (paper 4.2.2) or 'reference' (4.2.3), got {definition!r}")
    return _share_fooled(keep, adv_pred, y)


def fooling_rate(
    net: nn.Module,
    x: Tensor,
    x_adv: Tensor,
    y: Tensor,
    *,
    reference: nn.Module | None = None,
    definition: FoolingDefinition = "both",
) -> float:
    """Share of adversarial images that fool ``net``, among a subset of clean images.

    Args:
        net: The tested network.
        x: Clean images.
        x_adv: Their adversarial versions (same order).
        y: True labels.
        reference: The reference network.
        definition: ``"both"`` (paper 4.2.2, default): clean images correct for
            both ``net`` and ``reference`` (``net`` alone without a reference).
            ``"reference"`` (paper 4.2.3): clean images correct for
            ``reference``, the same subset for every tested network; needs
            ``reference``.

    Returns:
        The fooling rate in ``[0, 1]``; NaN when the subset is empty.
    """
    if definition == "reference" and reference is None:
        raise ValueError("definition='reference' (paper 4.2.3) needs reference=...")
    y = y.to(x.device)
    adv_pred = predict(net, x_adv).to(y.device)
    pred = predict(net, x).to(y.device) if definition == "both" else None
    ref_pred = predict(reference, x).to(y.device) if reference is not None else None
    return fooling_rate_from_predictions(pred, adv_pred, y, reference_pred=ref_pred, definition=definition)


def attack_success_rate(net: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> float:
    """Among images ``net`` classifies correctly when clean, the share whose adversarial version it misclassifies."""
    return fooling_rate(net, x, x_adv, y, reference=None, definition="both")


def split_of(data: Any, split: str) -> Any:
    """``data.<split>`` for a dataset bundle, or ``data`` itself when it is already a split (``.x``, ``.y``)."""
    if hasattr(data, split):
        return getattr(data, split)
    if hasattr(data, "x") and hasattr(data, "y"):
        return data
    raise ValueError(f"data has no split {split!r} and is not a split itself (needs .x and .y)")


def evaluate(
    net: nn.Module,
    data: Any,
    *,
    adversarial: Any = None,
    split: str = "test",
    reference: nn.Module | None = None,
) -> EvalResult:
    """Clean accuracy of ``net`` on ``data.<split>``; with ``adversarial`` (an
    adversarial set made from that split) also adversarial accuracy, both
    fooling rates and the attack success rate.

    Args:
        net: The tested network.
        data: A dataset bundle (``.train/.val/.test``) or one split (``.x``, ``.y``).
        adversarial: Adversarial versions of the split's images (``.x``, same order).
        split: Which split of ``data``.
        reference: The reference network; enables the 4.2.3 fooling rate and
            restricts the 4.2.2 one to images it also gets right.

    Returns:
        An :class:`EvalResult`; fields that need what was not given are None.
    """
    part = split_of(data, split)
    y = part.y
    pred = predict(net, part.x).to(y.device)
    clean = (pred == y).float().mean().item() if len(y) else float("nan")
    if adversarial is None:
        return EvalResult(clean_acc=clean)
    if adversarial.x.shape != part.x.shape:
        raise ValueError(
            f"adversarial set has shape {tuple(adversarial.x.shape)} but the {split} split has "
            f"{tuple(part.x.shape)}; was it made from another split?"
        )
    adv_pred = predict(net, adversarial.x).to(y.device)
    adv = (adv_pred == y).float().mean().item() if len(y) else float("nan")
    ref_pred = predict(reference, part.x).to(y.device) if reference is not None else None
    return EvalResult(
        clean_acc=clean,
        adv_acc=adv,
        fooling_rate=fooling_rate_from_predictions(pred, adv_pred, y, reference_pred=ref_pred),
        fooling_rate_reference=(
            fooling_rate_from_predictions(None, adv_pred, y, reference_pred=ref_pred, definition="reference")
            if ref_pred is not None
            else None
        ),
        attack_success_rate=fooling_rate_from_predictions(pred, adv_pred, y),
    )
