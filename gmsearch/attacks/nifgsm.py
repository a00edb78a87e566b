"""NI-FGSM: MI-FGSM with Nesterov look-ahead (Lin et al. 2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gmsearch.attacks._base import register
from gmsearch.attacks.mifgsm import MIFGSM


@register("ni_fgsm")
class NIFGSM(MIFGSM):
    """Nesterov iterative FGSM: MI-FGSM with a look-ahead gradient (Lin et al. 2020, ICLR).

    Paper: "Nesterov Accelerated Gradient and Scale Invariance for Adversarial Attacks", arXiv:1908.06281.

    MI-FGSM whose gradient is taken at the look-ahead point
    ``adv + decay * alpha * momentum``. Matches ``torchattacks.NIFGSM``.

    Args:
        eps: L-inf budget.
        alpha: Step size.
        steps: Number of steps.
        decay: Momentum decay factor mu.
        batch_size: Images attacked at once.
        seed: Unused (deterministic).
    """

    def gradient(
        self, model: nn.Module, adv: Tensor, y: Tensor, momentum: Tensor, state: dict[str, Tensor],
        generator: torch.Generator,
    ) -> Tensor:
        """The gradient at the look-ahead point (the same w.r.t. ``adv``: they differ by a constant)."""
        return self.input_grad(model, adv + self.decay * self.alpha * momentum, y, generator)
