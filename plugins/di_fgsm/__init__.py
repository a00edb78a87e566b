"""DI-FGSM (Xie et al., CVPR 2019): MI-FGSM with gradients of randomly resized-and-padded inputs (``decay > 0``:
M-DI2-FGSM). ``gms.load_plugin("di_fgsm")``, then ``gms.attacks.create("di_fgsm", eps=8 / 255)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmsearch import attacks


def diverse_input(x: Tensor, g: torch.Generator, *, resize_rate: float, prob: float) -> Tensor:
    """With probability ``prob``: shrink to a random size in ``[resize_rate * H, H]``, zero-pad back at random."""
    if torch.rand((), generator=g, device=x.device).item() >= prob:
        return x
    (h, w), draw = x.shape[-2:], lambda lo, hi: int(torch.randint(lo, hi + 1, (), generator=g, device=x.device))
    size = draw(max(1, int(h * resize_rate)), h)
    width = max(1, round(size * w / h))
    top, left = draw(0, h - size), draw(0, w - width)
    small = F.interpolate(x, size=(size, width), mode="bilinear", align_corners=False)
    return F.pad(small, (left, w - width - left, top, h - size - top))


@attacks.register("di_fgsm")
class DIFGSM(attacks.MIFGSM):
    """Momentum iterative FGSM with random resize-and-pad input diversity (Xie et al. 2019)."""

    resize_rate: float = 0.9
    diversity_prob: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0.0 < self.resize_rate <= 1.0 and 0.0 <= self.diversity_prob <= 1.0):
            raise ValueError(f"di_fgsm: need 0 < resize_rate <= 1 and 0 <= diversity_prob <= 1, got {self}")

    stochastic = property(lambda self: self.diversity_prob > 0)  # draws at every step

    def input_grad(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        assert generator is not None
        x = x.detach().requires_grad_(True)
        view = diverse_input(x, generator, resize_rate=self.resize_rate, prob=self.diversity_prob)
        return torch.autograd.grad(F.cross_entropy(model(view), y, reduction="sum"), x)[0]
