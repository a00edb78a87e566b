"""FGSM: one signed-gradient step (Goodfellow et al. 2015)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from gmsearch.attacks._base import Attack, register


@register("fgsm")
class FGSM(Attack):
    """Fast gradient sign method, one L-inf step of size eps (Goodfellow et al. 2015).

    Args:
        eps: L-inf budget.
        batch_size: Images attacked at once.
        seed: Unused (deterministic).
    """

    norm: ClassVar[str | None] = "linf"
    eps: float = 8 / 255

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, generator: torch.Generator) -> Tensor:
        """One signed-gradient step from ``x``, clamped to ``[0, 1]``."""
        grad = self.input_grad(model, x, y, generator)
        return torch.clamp(x + self.eps * grad.sign(), min=0, max=1)
