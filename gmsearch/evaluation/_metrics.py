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

:func:`transfer_matrix` attacks several *source* models and scores several
*target* networks on every source's adversarial set (paper Table 2), with a
worst-case-over-sources column. :func:`gradient_masking_checks` runs the
standard sanity checks (Carlini et al. 2019, "On evaluating adversarial
robustness") that an evolved network's robustness to *transferred* examples
is not an artefact of obfuscated gradients.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
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


def _split_of(data: Any, split: str) -> Any:
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
    part = _split_of(data, split)
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


# --------------------------------------------------------------------------- transfer matrix


def _inner(model: nn.Module) -> nn.Module:
    return getattr(model, "model", model)  # a FrozenReference wraps its network


def _percent(value: float) -> str:
    return "     -" if value is None or math.isnan(value) else f"{100 * value:6.2f}%"


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
        width = max(8, *(len(s) for s in self.sources))
        name_w = max(10, *(len(t) for t in self.targets))
        lines = [title] if title else []
        lines.append(
            f"adversarial accuracy of each target on each source's examples; {self.attack}; "
            f"{self.split} split, {self.n_images} images"
        )
        header = f"{'target':<{name_w}} {'clean':>8} " + " ".join(f"{s:>{width}}" for s in self.sources)
        lines.append(header + f" {'worst':>8} {'per-image':>9}")
        for t, target in enumerate(self.targets):
            cells = " ".join(
                f"{_percent(self.adv_acc[t][s]) + ('*' if self.white_box[t][s] else ' '):>{width}}"
                for s in range(len(self.sources))
            )
            lines.append(
                f"{target:<{name_w}} {_percent(self.clean_acc[t]):>8} {cells} "
                f"{_percent(self.worst_case[t]):>8} {_percent(self.per_image_worst_case[t]):>9}"
            )
        if any(any(row) for row in self.white_box):
            lines.append("* white-box: the source is the target itself")
        lines.append("worst: lowest accuracy over sources; per-image: correct under every source's example")
        return "\n".join(lines)

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
    part = _split_of(data, split)
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


# --------------------------------------------------------------------------- gradient masking


def default_eps_grid(in_channels: int) -> tuple[float, ...]:
    """L-inf budgets for :func:`gradient_masking_checks`: from 0 to well past the attack budget.

    Grey digit sets (default attack eps 0.2): 0 .. 0.5; RGB sets (8/255): 0 .. 64/255.
    """
    if in_channels == 1:
        return (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
    return (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255)


@dataclass(frozen=True)
class MaskingReport:
    """Result of :func:`gradient_masking_checks`.

    Attributes:
        eps: The L-inf budgets tried (0 is the clean accuracy).
        white_box_acc: Accuracy under multi-step PGD on the network itself, per eps.
        one_step_acc: Accuracy under one-step FGSM on the network itself, per eps.
        transfer_acc: Accuracy under PGD examples transferred from the
            surrogate, per eps (None without a surrogate).
        surrogate_clean_acc: The surrogate's clean accuracy (None without one).
        attack: The multi-step attack at the largest eps.
        n_images: Images attacked.
        tolerance: Slack allowed by the comparisons below.
        low: Accuracy the white-box curve must reach at the largest eps.
        monotone: The white-box curve never rises by more than ``tolerance`` as eps grows.
        reaches_low: White-box accuracy at the largest eps is at most ``low``.
        multi_step_stronger: PGD accuracy is at most FGSM accuracy (+ tolerance) at every eps.
        white_box_stronger: White-box PGD is at least as strong as transfer
            from the surrogate (+ tolerance) at every eps (None without a surrogate).
    """

    eps: tuple[float, ...]
    white_box_acc: tuple[float, ...]
    one_step_acc: tuple[float, ...]
    transfer_acc: tuple[float, ...] | None
    surrogate_clean_acc: float | None
    attack: str
    n_images: int
    tolerance: float
    low: float
    monotone: bool
    reaches_low: bool
    multi_step_stronger: bool
    white_box_stronger: bool | None

    @property
    def passed(self) -> bool:
        """All checks that ran passed (no sign of gradient masking)."""
        return (
            self.monotone and self.reaches_low and self.multi_step_stronger and self.white_box_stronger is not False
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable content, with ``passed``."""
        return {**asdict(self), "passed": self.passed}

    def to_text(self, *, title: str | None = None) -> str:
        """The curves as a table, then each check with its verdict."""
        lines = [title] if title else []
        lines.append(f"gradient-masking checks on {self.n_images} images; multi-step attack {self.attack}")
        transfer_head = f" {'transfer':>9}" if self.transfer_acc is not None else ""
        lines.append(f"{'eps':>8} {'PGD (wb)':>9} {'FGSM (wb)':>9}{transfer_head}")
        for i, e in enumerate(self.eps):
            transfer = f" {_percent(self.transfer_acc[i]):>9}" if self.transfer_acc is not None else ""
            lines.append(
                f"{e:8.4f} {_percent(self.white_box_acc[i]):>9} {_percent(self.one_step_acc[i]):>9}{transfer}"
            )

        def verdict(ok: bool | None) -> str:
            return "not run" if ok is None else ("ok" if ok else "FAILED")

        lines.append(
            f"white-box accuracy falls as eps grows (tolerance {self.tolerance:.2f}): {verdict(self.monotone)}"
        )
        lines.append(f"white-box accuracy at eps={self.eps[-1]:.4g} <= {self.low:.2f}: {verdict(self.reaches_low)}")
        lines.append(f"multi-step PGD at least as strong as one-step FGSM: {verdict(self.multi_step_stronger)}")
        surrogate = (
            f" (surrogate clean acc {_percent(self.surrogate_clean_acc).strip()})"
            if self.surrogate_clean_acc is not None
            else ""
        )
        lines.append(f"white-box at least as strong as transfer from a surrogate{surrogate}: "
                     f"{verdict(self.white_box_stronger)}")
        lines.append(f"=> {'no sign of gradient masking' if self.passed else 'POSSIBLE GRADIENT MASKING'}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def gradient_masking_checks(
    net: nn.Module,
    data: Any,
    *,
    split: str = "test",
    eps: Sequence[float] | None = None,
    steps: int = 20,
    surrogate: nn.Module | None = None,
    limit: int | None = 500,
    tolerance: float = 0.02,
    low: float = 0.1,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> MaskingReport:
    """Sanity checks that a network's robustness is not gradient masking.

    A network that resists *transferred* examples (what the search rewards)
    must still fall to attacks computed on itself; otherwise its gradients
    are obfuscated and the numbers mean little. Three checks (Carlini et al.
    2019; Athalye et al. 2018):

    1. white-box L-inf PGD on the network drives its accuracy down as eps
       grows, to at most ``low`` at the largest eps (the curve is returned);
    2. multi-step PGD is at least as strong as one-step FGSM at every eps;
    3. white-box PGD is at least as strong as PGD transferred from an
       independently trained ``surrogate`` (a black-box attack beating the
       white-box one is a classic sign of masking).

    Args:
        net: The network to check (e.g. an evolved NE+GM network).
        data: A dataset bundle or one split (``.x``, ``.y``), on ``net``'s device.
        split: Which split of ``data``.
        eps: L-inf budgets, increasing (default :func:`default_eps_grid`).
        steps: PGD steps; the step size is ``2.5 * eps / steps`` (Madry et al.), with a random start.
        surrogate: An independently trained model for check 3 (e.g.
            ``gmsearch.references.get("hand_b", data, seed=1)``); None skips it.
        limit: Attack only the first ``limit`` images (None: all).
        tolerance: Slack in accuracy allowed by the comparisons.
        low: Accuracy the white-box curve must reach at the largest eps.
        cache_dir: Cache for the adversarial sets (None: not cached).
        seed: Seeds PGD's random start.

    Returns:
        A :class:`MaskingReport` (``print(report)`` shows curves and verdicts).
    """
    from gmsearch import attacks

    part = _split_of(data, split)
    x, y = (part.x[:limit], part.y[:limit]) if limit is not None else (part.x, part.y)
    grid = tuple(float(e) for e in (eps if eps is not None else default_eps_grid(int(x.shape[1]))))
    if not grid or any(e < 0 for e in grid) or list(grid) != sorted(grid):
        raise ValueError(f"eps must be a non-empty increasing sequence of budgets >= 0, got {grid}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    clean = accuracy(net, x, y)

    def attacked_acc(model: nn.Module, target: nn.Module, atk: Any, tag: str) -> float:
        adv = attacks.adversarial_set(model, x, y, atk, cache_dir=cache_dir, tag=tag)
        return accuracy(target, adv.x, y)

    white, one, transfer = [], [], []
    description = ""
    for e in grid:
        if e == 0:
            white.append(clean)
            one.append(clean)
            if surrogate is not None:
                transfer.append(clean)
            continue
        pgd = attacks.create("pgd_linf", eps=e, alpha=2.5 * e / steps, steps=steps, random_start=True, seed=seed)
        description = pgd.describe()
        white.append(attacked_acc(net, net, pgd, "masking"))
        one.append(attacked_acc(net, net, attacks.create("fgsm", eps=e), "masking"))
        if surrogate is not None:
            transfer.append(attacked_acc(surrogate, net, pgd, "masking-surrogate"))
    monotone = all(b <= a + tolerance for a, b in itertools.pairwise(white))
    return MaskingReport(
        eps=grid,
        white_box_acc=tuple(white),
        one_step_acc=tuple(one),
        transfer_acc=tuple(transfer) if surrogate is not None else None,
        surrogate_clean_acc=accuracy(surrogate, x, y) if surrogate is not None else None,
        attack=description or "none (eps 0 only)",
        n_images=len(y),
        tolerance=tolerance,
        low=low,
        monotone=monotone,
        reaches_low=white[-1] <= low,
        multi_step_stronger=all(w <= o + tolerance for w, o in zip(white, one, strict=True)),
        white_box_stronger=(
            all(w <= t + tolerance for w, t in zip(white, transfer, strict=True)) if surrogate is not None else None
        ),
    )
