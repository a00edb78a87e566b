"""Gradient-masking checks (Carlini et al. 2019, "On evaluating adversarial robustness"): is an
evolved network's robustness to *transferred* examples an artefact of obfuscated gradients?"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from gmsearch.evaluation.metrics import accuracy, split_of
from gmsearch.evaluation.tables import percent, text_table


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
        header = ["eps", "PGD (wb)", "FGSM (wb)"] + (["transfer"] if self.transfer_acc is not None else [])
        rows = [
            [f"{e:.4f}", percent(self.white_box_acc[i]), percent(self.one_step_acc[i])]
            + ([percent(self.transfer_acc[i])] if self.transfer_acc is not None else [])
            for i, e in enumerate(self.eps)
        ]
        lines = [title] if title else []
        lines.append(f"gradient-masking checks on {self.n_images} images; multi-step attack {self.attack}")
        lines.append(text_table(header, rows, left=()))

        def verdict(ok: bool | None) -> str:
            return "not run" if ok is None else ("ok" if ok else "FAILED")

        lines.append(
            f"white-box accuracy falls as eps grows (tolerance {self.tolerance:.2f}): {verdict(self.monotone)}"
        )
        lines.append(f"white-box accuracy at eps={self.eps[-1]:.4g} <= {self.low:.2f}: {verdict(self.reaches_low)}")
        lines.append(f"multi-step PGD at least as strong as one-step FGSM: {verdict(self.multi_step_stronger)}")
        surrogate = (
            f" (surrogate clean acc {percent(self.surrogate_clean_acc)})"
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

    part = split_of(data, split)
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
