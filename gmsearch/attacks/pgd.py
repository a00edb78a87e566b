"""Projected gradient descent in the L-inf and L2 balls (Madry et al. 2018)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from gmsearch.attacks._base import Attack, _check_bool, _check_int, _check_number, _per_sample, register


@register("pgd_linf")
class PGDLinf(Attack):
    """Projected gradient descent in the L-inf ball (Madry et al. 2018).

    Matches ``torchattacks.PGD`` update for update (with ``random_start=False``
    exactly; with a random start the draw comes from this attack's seeded
    generator on the input device).

    Args:
        eps: L-inf budget. Default 8/255 (RGB, Madry et al.); grey digit sets
            need more, see :func:`~gmsearch.attacks.default_budget`.
        alpha: Step size.
        steps: Number of steps.
        random_start: Start from a uniform point in the eps-ball.
        batch_size: Images attacked at once.
        seed: Seeds the random start.
    """

    norm: ClassVar[str | None] = "linf"
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    random_start: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alpha = _check_number("alpha", self.alpha, strict=True)
        self.steps = _check_int("steps", self.steps, low=0)
        self.random_start = _check_bool("random_start", self.random_start)

    @property
    def stochastic(self) -> bool:
        """True when starting from a random point."""
        return self.random_start

    def start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A uniform point in the L-inf eps-ball around ``x``, clamped to ``[0, 1]``."""
        noise = torch.empty_like(x).uniform_(-self.eps, self.eps, generator=generator)
        return torch.clamp(x + noise, min=0, max=1)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, generator: torch.Generator) -> Tensor:
        """``steps`` signed-gradient steps, each projected to the eps-ball and ``[0, 1]``."""
        adv = start
        for _ in range(self.steps):
            grad = self.input_grad(model, adv, y, generator)
            adv = adv.detach() + self.alpha * grad.sign()
            delta = torch.clamp(adv - x, min=-self.eps, max=self.eps)
            adv = torch.clamp(x + delta, min=0, max=1)
        return adv.detach()


@register("pgd_l2")
class PGDL2(PGDLinf):
    """Projected gradient descent in the L2 ball (Madry et al. 2018).

    Matches ``torchattacks.PGDL2`` (gradient norms offset by 1e-10, the
    perturbation rescaled onto the ball, then clamped to ``[0, 1]``).

    Args:
        eps: L2 budget per image.
        alpha: Step length (L2).
        steps: Number of steps.
        random_start: Start from a random point in the eps-ball.
        batch_size: Images attacked at once.
        seed: Seeds the random start.
    """

    #: Added to gradient norms before dividing (as torchattacks).
    eps_for_division: ClassVar[float] = 1e-10
    norm: ClassVar[str | None] = "l2"

    eps: float = 1.0
    alpha: float = 0.2

    def start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A random direction scaled to a uniform radius in ``[0, eps]`` (as torchattacks)."""
        delta = torch.empty_like(x).normal_(generator=generator)
        norms = _per_sample(delta.flatten(1).norm(p=2, dim=1), x)
        radius = torch.empty_like(norms).uniform_(0, 1, generator=generator)
        return torch.clamp(x + delta * (radius / norms * self.eps), min=0, max=1)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, generator: torch.Generator) -> Tensor:
        """``steps`` normalised-gradient steps, each projected to the L2 ball and ``[0, 1]``."""
        adv = start
        for _ in range(self.steps):
            grad = self.input_grad(model, adv, y, generator)
            grad_norms = grad.flatten(1).norm(p=2, dim=1) + self.eps_for_division
            adv = adv.detach() + self.alpha * (grad / _per_sample(grad_norms, grad))
            delta = adv - x
            delta_norms = delta.flatten(1).norm(p=2, dim=1)
            factor = torch.clamp(self.eps / delta_norms, max=1.0)  # eps / 0 = inf -> 1
            adv = torch.clamp(x + delta * _per_sample(factor, delta), min=0, max=1)
        return adv.detach()
