"""TI-FGSM: translation-invariant attack by smoothing the gradient, with input diversity (Dong et al. 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmsearch.attacks._base import _check_bool, _check_int, _check_number, register
from gmsearch.attacks.mifgsm import MIFGSM
from gmsearch.registry import PluginError

#: Kernels the gradient can be smoothed with.
KERNELS = ("gaussian", "linear", "uniform")


def smoothing_kernel(name: str, size: int, nsig: float) -> Tensor:
    """The normalised ``size x size`` kernel (float32), built as torchattacks builds it (in float64)."""
    if name == "gaussian":
        points = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
        line = torch.exp(-(points**2) / 2) / math.sqrt(2 * math.pi)
    elif name == "linear":
        line = 1 - torch.abs(torch.linspace((1 - size) / 2, (size - 1) / 2, size, dtype=torch.float64) / (size + 1) * 2)
    else:
        line = torch.ones(size, dtype=torch.float64)
    kernel = torch.outer(line, line)
    return (kernel / kernel.sum()).float()


@register("ti_fgsm")
class TIFGSM(MIFGSM):
    """Translation-invariant FGSM: smoothed gradients of diverse inputs (Dong et al. 2019, CVPR).

    Paper: "Evading Defenses to Transferable Adversarial Examples by Translation-Invariant Attacks",
    arXiv:1904.02884; with DI-FGSM's input diversity (Xie et al. 2019), as torchattacks.

    Each step's gradient is taken on a randomly shrunk-and-padded copy of
    the images (with probability ``diversity_prob``), then convolved with a
    smoothing kernel per channel. Matches ``torchattacks.TIFGSM``, whose
    defaults it keeps (no momentum, Gaussian 15x15 kernel): its per-step
    draws (size, padding, coin) come from this attack's generator in
    torchattacks' order, so on the same seed the two agree. The resize
    follows the image width, as there (meant for square images).

    Args:
        eps: L-inf budget.
        alpha: Step size.
        steps: Number of steps.
        decay: Momentum decay factor mu (0: I-FGSM's plain sign steps).
        kernel_name: ``"gaussian"``, ``"linear"`` or ``"uniform"``.
        len_kernel: Kernel side (odd).
        nsig: Gaussian kernel radius in standard deviations.
        resize_rate: Shrink (< 1) or grow (> 1) factor bounding the random size.
        diversity_prob: Probability of using the resized copy at a step.
        random_start: Start from a uniform point in the eps-ball.
        batch_size: Images attacked at once (the draws continue from chunk to chunk).
        seed: Seeds the draws.
    """

    draws_per_step = True

    decay: float = 0.0
    kernel_name: str = "gaussian"
    len_kernel: int = 15
    nsig: float = 3.0
    resize_rate: float = 0.9
    diversity_prob: float = 0.5
    random_start: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel_name not in KERNELS:
            raise ValueError(f"kernel_name must be one of {', '.join(KERNELS)}; got {self.kernel_name!r}")
        self.len_kernel = _check_int("len_kernel", self.len_kernel, low=1)
        if self.len_kernel % 2 == 0:
            raise ValueError(f"len_kernel must be odd (a centred kernel), got {self.len_kernel}")
        self.nsig = _check_number("nsig", self.nsig, strict=True)
        self.resize_rate = _check_number("resize_rate", self.resize_rate, strict=True)
        if self.resize_rate == 1.0:
            raise ValueError("resize_rate must differ from 1 (it bounds the random size), got 1")
        self.diversity_prob = _check_number("diversity_prob", self.diversity_prob)
        self.random_start = _check_bool("random_start", self.random_start)
        self._kernel = smoothing_kernel(self.kernel_name, self.len_kernel, self.nsig)

    def start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A uniform point in the eps-ball (``random_start``), else ``x``."""
        if not self.random_start:
            return x
        return torch.clamp(x + torch.empty_like(x).uniform_(-self.eps, self.eps, generator=generator), 0, 1)

    def transform(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """DI's resize-and-pad, drawn as torchattacks draws it (every number drawn, the resize only if used)."""
        width = x.shape[-1]
        low, high = sorted((int(width * self.resize_rate), width))
        if low >= high:
            raise PluginError(
                f"attack {self.name!r}: resize_rate {self.resize_rate:g} gives no size to draw for images "
                f"{width} wide (int({width} * rate) equals {width}); use a rate further from 1"
            )

        def draw(lo: int, hi: int) -> int:
            return int(torch.randint(lo, hi, (1,), dtype=torch.int32, generator=generator, device=x.device).item())

        size = draw(low, high)
        top, left = draw(0, high - size), draw(0, high - size)
        if not torch.rand(1, generator=generator, device=x.device).item() < self.diversity_prob:
            return x
        small = F.interpolate(x, size=[size, size], mode="bilinear", align_corners=False)
        return F.pad(small, [left, high - size - left, top, high - size - top], value=0)

    def gradient(
        self, model: nn.Module, adv: Tensor, y: Tensor, momentum: Tensor, state: dict[str, Tensor],
        generator: torch.Generator,
    ) -> Tensor:
        """The gradient on the diverse copy, smoothed per channel by the kernel."""
        grad = self.input_grad(model, adv, y, generator)
        channels = grad.shape[1]
        kernel = self._kernel.to(grad.device, grad.dtype).expand(channels, 1, *self._kernel.shape)
        return F.conv2d(grad, kernel, stride=1, padding="same", groups=channels)
