"""DI-FGSM: momentum iterative FGSM with input diversity (Xie et al., CVPR 2019).

A transfer attack: at every step, with probability ``diversity_prob``, the
images are randomly shrunk and zero-padded back (a random resize-and-pad)
before the gradient is taken, which keeps the perturbation from overfitting
the source model. With ``decay > 0`` it is M-DI2-FGSM (momentum, Dong et al.
2018). Load it with ``gms.load_plugin("di_fgsm")``, ``plugins = ["di_fgsm"]``
in a config, or ``gmsearch plugins --plugin di_fgsm``; then use it by name::

    attack = gms.attacks.create("di_fgsm", eps=8 / 255, steps=10)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmsearch import attacks


def diverse_input(x: Tensor, generator: torch.Generator, *, resize_rate: float, prob: float) -> Tensor:
    """Random shrink to ``[resize_rate * H, H)`` and random zero padding back to ``H x W``."""
    if torch.rand((), generator=generator, device=x.device).item() >= prob:
        return x
    h, w = x.shape[-2:]
    low = max(1, int(h * resize_rate))
    size = int(torch.randint(low, h + 1, (), generator=generator, device=x.device).item())
    width = max(1, round(size * w / h))
    small = F.interpolate(x, size=(size, width), mode="bilinear", align_corners=False)
    top = int(torch.randint(0, h - size + 1, (), generator=generator, device=x.device).item())
    left = int(torch.randint(0, w - width + 1, (), generator=generator, device=x.device).item())
    return F.pad(small, (left, w - width - left, top, h - size - top))


@attacks.register("di_fgsm")
class DIFGSM(attacks.MIFGSM):
    """Momentum iterative FGSM with random resize-and-pad input diversity (Xie et al. 2019)."""

    resize_rate: float = 0.9
    diversity_prob: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.resize_rate <= 1.0:
            raise ValueError(f"di_fgsm: resize_rate must be in (0, 1], got {self.resize_rate}")
        if not 0.0 <= self.diversity_prob <= 1.0:
            raise ValueError(f"di_fgsm: diversity_prob must be in [0, 1], got {self.diversity_prob}")

    @property
    def stochastic(self) -> bool:
        return self.diversity_prob > 0

    def input_grad(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The gradient at ``x`` of the loss on a randomly resized-and-padded view of ``x``."""
        assert generator is not None
        x = x.detach().requires_grad_(True)
        view = diverse_input(x, generator, resize_rate=self.resize_rate, prob=self.diversity_prob)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(view), y, reduction="sum"), x)
        return grad
