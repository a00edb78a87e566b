"""MI-FGSM (Dong et al. 2018), and the loop the transfer attacks built on it share."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmsearch.attacks._base import Attack, _check_int, _check_number, register


@register("mi_fgsm")
class MIFGSM(Attack):
    """Momentum iterative FGSM, for transferable examples (Dong et al. 2018, CVPR).

    Paper: "Boosting Adversarial Attacks with Momentum", arXiv:1710.06081.

    Matches ``torchattacks.MIFGSM``: each gradient is divided by its mean
    absolute value per image and added to the decayed momentum, whose sign
    drives an L-inf step. (A zero gradient gives a zero step here rather
    than NaN.)

    The transfer attacks subclass it (as in TransferAttack) and change one of
    its points of variation: :meth:`transform` (the copies of the current
    images whose summed loss is differentiated: scale, block shuffle,
    structure invariance), :meth:`loss` (over the copies' logits), or
    :meth:`gradient` (how a step's gradient is taken: a look-ahead point,
    variance tuning, smoothing). An attack that draws at every step sets
    :attr:`draws_per_step`; its draws continue from chunk to chunk, so its
    ``batch_size`` is part of its result and of :meth:`params`.

    Args:
        eps: L-inf budget.
        alpha: Step size.
        steps: Number of steps.
        decay: Momentum decay factor mu.
        batch_size: Images attacked at once.
        seed: Seeds the generator the hooks draw from (unused here: deterministic).
    """

    norm: ClassVar[str | None] = "linf"
    #: Whether :meth:`transform` or :meth:`gradient` draw from the generator at every step.
    draws_per_step: ClassVar[bool] = False

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    decay: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alpha = _check_number("alpha", self.alpha, strict=True)
        self.steps = _check_int("steps", self.steps, low=0)
        self.decay = _check_number("decay", self.decay)

    @property
    def stochastic(self) -> bool:
        """True for attacks that draw at every step."""
        return self.draws_per_step

    def params(self) -> dict[str, Any]:
        """Hyper-parameters; ``batch_size`` included when the draws continue from chunk to chunk."""
        found = super().params()
        if not self.draws_per_step:
            return found
        seed = found.pop("seed")
        return {**found, "batch_size": self.batch_size, "seed": seed}

    # ---- points of variation

    def transform(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Copies of ``x`` stacked along the batch (``k * N`` images, copy-major); identity here."""
        return x

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Loss over the copies' logits (labels repeated per copy): summed cross-entropy."""
        return F.cross_entropy(logits, y, reduction="sum")

    def input_grad(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Gradient w.r.t. ``x`` of :meth:`loss` over :meth:`transform`'s copies, in one forward pass."""
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        x = x.detach().requires_grad_(True)
        copies = self.transform(x, generator)
        repeats = copies.shape[0] // x.shape[0]
        loss = self.loss(model(copies), y if repeats == 1 else y.repeat(repeats))
        (grad,) = torch.autograd.grad(loss, x)
        return grad

    def gradient(
        self, model: nn.Module, adv: Tensor, y: Tensor, momentum: Tensor, state: dict[str, Tensor],
        generator: torch.Generator,
    ) -> Tensor:
        """One step's gradient at ``adv`` (``state``: the chunk's own tensors kept between steps)."""
        return self.input_grad(model, adv, y, generator)

    # ---- the loop

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, generator: torch.Generator) -> Tensor:
        """``steps`` momentum steps, each projected to the eps-ball and ``[0, 1]``."""
        dims = tuple(range(1, x.dim()))
        momentum = torch.zeros_like(x)
        state: dict[str, Tensor] = {}
        tiny = torch.finfo(x.dtype).tiny
        adv = start
        for _ in range(self.steps):
            grad = self.gradient(model, adv, y, momentum, state, generator)
            grad = grad / torch.mean(torch.abs(grad), dim=dims, keepdim=True).clamp_min(tiny)
            momentum = grad + momentum * self.decay
            adv = adv.detach() + self.alpha * momentum.sign()
            delta = torch.clamp(adv - x, min=-self.eps, max=self.eps)
            adv = torch.clamp(x + delta, min=0, max=1)
        return adv.detach()
