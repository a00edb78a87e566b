"""MI-FGSM: momentum iterative FGSM for transferable examples (Dong et al. 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gmsearch.attacks._base import Attack, _check_int, _check_number, register


@register("mi_fgsm")
class MIFGSM(Attack):
    """Momentum iterative FGSM, for transferable examples (Dong et al. 2018).

    Matches ``torchattacks.MIFGSM``: each gradient is divided by its mean
    absolute value per image and added to the decayed momentum, whose sign
    drives an L-inf step. (A zero gradient gives a zero step here rather
    than NaN.)

    Args:
        eps: L-inf budget.
        alpha: Step size.
        steps: Number of steps.
        decay: Momentum decay factor mu.
        batch_size: Images attacked at once.
        seed: Seeds the generator passed to :meth:`input_grad` (unused here: deterministic).
    """

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    decay: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alpha = _check_number("alpha", self.alpha, strict=True)
        self.steps = _check_int("steps", self.steps, low=0)
        self.decay = _check_number("decay", self.decay)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, generator: torch.Generator) -> Tensor:
        """``steps`` momentum steps, each projected to the eps-ball and ``[0, 1]``."""
        dims = tuple(range(1, x.dim()))
        momentum = torch.zeros_like(x)
        tiny = torch.finfo(x.dtype).tiny
        adv = start
        for _ in range(self.steps):
            grad = self.input_grad(model, adv, y, generator)
            grad = grad / torch.mean(torch.abs(grad), dim=dims, keepdim=True).clamp_min(tiny)
            momentum = grad + momentum * self.decay
            adv = adv.detach() + self.alpha * momentum.sign()
            delta = torch.clamp(adv - x, min=-self.eps, max=self.eps)
            adv = torch.clamp(x + delta, min=0, max=1)
        return adv.detach()
