"""VMI-FGSM: MI-FGSM with variance tuning (Wang and He 2021)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gmsearch.attacks._base import _check_int, _check_number, register
from gmsearch.attacks.mifgsm import MIFGSM


@register("vmi_fgsm")
class VMIFGSM(MIFGSM):
    """Variance-tuned MI-FGSM: gradients corrected by sampled neighbours (Wang and He 2021, CVPR).

    Paper: "Enhancing the Transferability of Adversarial Attacks through Variance Tuning", arXiv:2103.15571.

    Each step uses the gradient plus the previous step's variance: the mean
    gradient at ``N`` points drawn uniformly from the L-inf ball of radius
    ``beta * eps`` around the current images, minus the gradient there (the
    ``N`` neighbours go through the model in one forward pass). Matches
    ``torchattacks.VMIFGSM`` on the same seed: the neighbours come from this
    attack's generator, drawn exactly as torchattacks draws them from the
    global one (a normal draw overwritten by the uniform one, so the streams
    agree).

    Args:
        eps: L-inf budget.
        alpha: Step size.
        steps: Number of steps.
        decay: Momentum decay factor mu.
        N: Neighbours sampled per step (memory grows with ``N * batch_size``).
        beta: Neighbourhood radius as a multiple of ``eps``.
        batch_size: Images attacked at once (the draws continue from chunk to chunk).
        seed: Seeds the neighbours.
    """

    draws_per_step = True

    N: int = 5
    beta: float = 3 / 2

    def __post_init__(self) -> None:
        super().__post_init__()
        self.N = _check_int("N", self.N, low=1)
        self.beta = _check_number("beta", self.beta)

    def gradient(
        self, model: nn.Module, adv: Tensor, y: Tensor, momentum: Tensor, state: dict[str, Tensor],
        generator: torch.Generator,
    ) -> Tensor:
        """The gradient at ``adv`` plus the variance of the last step; this step's variance kept in ``state``."""
        grad = self.input_grad(model, adv, y, generator)
        radius = self.eps * self.beta
        neighbours = torch.cat([
            adv + torch.empty_like(adv).normal_(generator=generator).uniform_(-radius, radius, generator=generator)
            for _ in range(self.N)
        ])
        # The gradient w.r.t. the neighbours' sum is the sum of their gradients (they are adv + noise).
        neighbour_sum = self._copies_grad(model, adv, neighbours, y)
        tuned = grad + state["variance"] if "variance" in state else grad
        state["variance"] = neighbour_sum / self.N - grad
        return tuned

    def _copies_grad(self, model: nn.Module, adv: Tensor, copies: Tensor, y: Tensor) -> Tensor:
        copies = copies.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.loss(model(copies), y.repeat(self.N)), copies)
        return grad.view(self.N, *adv.shape).sum(0)
