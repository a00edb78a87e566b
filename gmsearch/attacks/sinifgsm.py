"""SI-NI-FGSM: NI-FGSM over scaled copies of the image (Lin et al. 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from gmsearch.attacks._base import _check_int, register
from gmsearch.attacks.nifgsm import NIFGSM


@register("sini_fgsm")
class SINIFGSM(NIFGSM):
    """Scale-invariant NI-FGSM: gradients over the copies x / 2**i (Lin et al. 2020, ICLR).

    Paper: "Nesterov Accelerated Gradient and Scale Invariance for Adversarial Attacks", arXiv:1908.06281.

    NI-FGSM whose gradient is that of the loss summed over the copies
    ``x / 2**i`` for ``i < m`` (all copies in one forward pass). Matches
    ``torchattacks.SINIFGSM``.

    Args:
        eps: L-inf budget.
        alpha: Step size.
        steps: Number of steps.
        decay: Momentum decay factor mu.
        m: Number of scale copies (memory grows with ``m * batch_size``).
        batch_size: Images attacked at once.
        seed: Unused (deterministic).
    """

    m: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        self.m = _check_int("m", self.m, low=1)

    def transform(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """``x, x / 2, ..., x / 2**(m - 1)`` (exact: powers of two)."""
        return torch.cat([x / 2**i for i in range(self.m)])
