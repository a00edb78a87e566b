"""Standard adversarial defenses applied to the reference, the baselines of paper Table 6.

Two input transformations, as ``nn.Module`` wrappers that preprocess images
before the wrapped network (models still take ``[0, 1]`` images):

- :class:`JPEGDefense`: JPEG compression and decompression (Guo et al. 2018),
  through Pillow (a torchvision dependency; ``torchvision.io``'s JPEG codec is deprecated);
- :class:`BilateralDefense`: an edge-preserving bilateral filter
  (the denoising of Xie et al. 2019, applied to the input), vectorised in torch.

Both pass gradients straight through the transformation by default (BPDA,
Athalye et al. 2018), so a white-box attack on the wrapped model sees the
network's gradient rather than none at all; the paper's Table 6 attacks the
*undefended* reference and only scores the defended one, where this does not
matter.

Two adversarial-training recipes that produce a defended copy of a network:

- :func:`free_adversarial_training` (Shafahi et al. 2019): every minibatch is
  replayed ``replays`` (``m``) times; each replay takes one gradient step on
  the weights and one signed step of size ``eps`` on a perturbation that
  persists across minibatches;
- :func:`fast_adversarial_training` (Wong et al. 2020): FGSM from a uniform
  random start in the eps-ball with step ``alpha = 1.25 eps``, then a
  weight step on the perturbed batch.

Like the rest of gmsearch (and the paper, which keeps PyTorch defaults) both
use Adam with default settings rather than the papers' SGD schedules.
:func:`adversarially_trained_copy` trains a fresh copy of the reference's
architecture with either. All defenses are scored with the paper's 4.2.3
fooling rate (``gmsearch.evaluation.fooling_rate(..., definition="reference")``).

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    >>> defended = JPEGDefense(net, quality=50)
    >>> defended(torch.rand(2, 3, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import copy
import io
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmsearch.data._loaders import Dataset
from gmsearch.evaluation import accuracy
from gmsearch.training.loop import TrainResult, resolve_device, run_epochs

logger = logging.getLogger(__name__)

__all__ = [
    "BilateralDefense",
    "InputTransformDefense",
    "JPEGDefense",
    "adversarially_trained_copy",
    "bilateral_filter",
    "fast_adversarial_training",
    "free_adversarial_training",
    "jpeg_compress",
]


# --------------------------------------------------------------------------- input transformations


def jpeg_compress(x: Tensor, *, quality: int = 75) -> Tensor:
    """Each image JPEG-encoded at ``quality`` and decoded again (8-bit round trip, through Pillow).

    Args:
        x: Images ``(N, C, H, W)`` with 1 or 3 channels, in ``[0, 1]``.
        quality: JPEG quality, 1 (strongest compression) to 100.

    Returns:
        Float images of ``x``'s shape, dtype and device, in ``[0, 1]``.
    """
    import numpy as np
    from PIL import Image

    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality!r}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x must be (N, C, H, W) with 1 or 3 channels, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        return x.clone()
    pixels = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for image in pixels:
        buffer = io.BytesIO()
        grey = image.shape[-1] == 1
        Image.fromarray(image[..., 0] if grey else image).save(
            buffer, format="JPEG", quality=int(quality)
        )
        buffer.seek(0)
        with Image.open(buffer) as img:
            decoded.append(np.asarray(img.convert("L" if grey else "RGB")).reshape(image.shape))
    out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    return out.to(device=x.device, dtype=x.dtype).div_(255.0).contiguous()


def bilateral_filter(
    x: Tensor,
    *,
    kernel_size: int = 5,
    sigma_space: float = 1.0,
    sigma_color: float = 0.1,
    chunk: int = 256,
) -> Tensor:
    """Bilateral filter: each pixel becomes a weighted mean of its neighbours.

    Weights are ``exp(-d^2 / 2 sigma_space^2) * exp(-c^2 / 2 sigma_color^2)``
    with ``d`` the spatial distance in pixels and ``c`` the Euclidean colour
    distance over channels (one joint range kernel, so colours are not
    mixed channel by channel). Borders are reflected. Vectorised with
    ``unfold``; ``chunk`` images at a time bound the memory.

    Args:
        x: Images ``(N, C, H, W)`` in ``[0, 1]``.
        kernel_size: Odd window width.
        sigma_space: Spatial standard deviation, pixels.
        sigma_color: Range standard deviation, intensity units (``[0, 1]`` scale).
        chunk: Images filtered at once.

    Returns:
        Filtered images, same shape, dtype and device.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    if sigma_space <= 0 or sigma_color <= 0:
        raise ValueError(f"sigma_space and sigma_color must be > 0, got {sigma_space!r} and {sigma_color!r}")
    if x.dim() != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    k, r = kernel_size, kernel_size // 2
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - r
    d2 = offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2
    spatial = torch.exp(-d2 / (2 * sigma_space**2)).reshape(1, k * k, 1)
    outs = []
    for lo in range(0, n, chunk):
        part = x[lo : lo + chunk]
        m = part.shape[0]
        mode = "reflect" if min(h, w) > r else "replicate"
        padded = F.pad(part, (r, r, r, r), mode=mode)
        patches = F.unfold(padded, kernel_size=k).view(m, c, k * k, h * w)
        centre = part.reshape(m, c, 1, h * w)
        colour = ((patches - centre) ** 2).sum(dim=1)  # (m, k*k, h*w)
        weights = spatial * torch.exp(-colour / (2 * sigma_color**2))
        filtered = (patches * weights.unsqueeze(1)).sum(dim=2) / weights.sum(dim=1, keepdim=True)
        outs.append(filtered.view(m, c, h, w))
    return torch.cat(outs) if outs else x.clone()


class InputTransformDefense(nn.Module):
    """A network preceded by a fixed input transformation.

    Args:
        model: The network to defend (e.g. the reference).
        straight_through: Pass gradients through the transformation as if it
            were the identity (BPDA), so white-box attacks on the wrapper work.
    """

    def __init__(self, model: nn.Module, *, straight_through: bool = True) -> None:
        super().__init__()
        self.model = model
        self.straight_through = straight_through

    def transform(self, x: Tensor) -> Tensor:
        """The preprocessing, ``[0, 1]`` images in and out."""
        raise NotImplementedError(f"{type(self).__name__} must implement transform(x)")

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the wrapped network on the transformed images."""
        if self.straight_through and x.requires_grad:
            with torch.no_grad():
                moved = self.transform(x) - x
            return self.model(x + moved)
        return self.model(self.transform(x))


class JPEGDefense(InputTransformDefense):
    """JPEG compression before the network (Guo et al. 2018; paper Table 6 "JPEG Comp.").

    Args:
        model: The network to defend.
        quality: JPEG quality, 1..100 (lower: stronger filtering).
        straight_through: See :class:`InputTransformDefense`.
    """

    def __init__(self, model: nn.Module, *, quality: int = 75, straight_through: bool = True) -> None:
        super().__init__(model, straight_through=straight_through)
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"quality must be in 1..100, got {quality!r}")
        self.quality = int(quality)

    def transform(self, x: Tensor) -> Tensor:
        """JPEG round trip at ``quality``."""
        return jpeg_compress(x, quality=self.quality)

    def extra_repr(self) -> str:
        return f"quality={self.quality}"


class BilateralDefense(InputTransformDefense):
    """A bilateral filter before the network (paper Table 6 "Bilateral Filt.").

    Args:
        model: The network to defend.
        kernel_size: Odd window width.
        sigma_space: Spatial standard deviation, pixels.
        sigma_color: Range standard deviation on the ``[0, 1]`` intensity scale.
        straight_through: See :class:`InputTransformDefense`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        kernel_size: int = 5,
        sigma_space: float = 1.0,
        sigma_color: float = 0.1,
        straight_through: bool = True,
    ) -> None:
        super().__init__(model, straight_through=straight_through)
        bilateral_filter(torch.zeros(1, 1, 4, 4), kernel_size=kernel_size, sigma_space=sigma_space,
                         sigma_color=sigma_color)  # validates the settings now
        self.kernel_size = kernel_size
        self.sigma_space = float(sigma_space)
        self.sigma_color = float(sigma_color)

    def transform(self, x: Tensor) -> Tensor:
        """The bilateral filter."""
        return bilateral_filter(
            x, kernel_size=self.kernel_size, sigma_space=self.sigma_space, sigma_color=self.sigma_color
        )

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma_space={self.sigma_space}, sigma_color={self.sigma_color}"


# --------------------------------------------------------------------------- adversarial training


def _check_training(eps: float, epochs: int, batch_size: int) -> None:
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm), got {batch_size}")


def _adversarial_training_loop(
    net: nn.Module, data: Dataset, dev: torch.device, *, epochs: int, batch_size: int, seed: int,
    batch_step: Callable[[Tensor, Tensor], Tensor], what: str,
) -> TrainResult:
    """:func:`~gmsearch.training.loop.run_epochs` over ``data.train``; val accuracy each epoch."""
    x_val, y_val = data.val.x.to(dev), data.val.y.to(dev)

    def measure(record: dict[str, float]) -> None:
        record["val_acc"] = accuracy(net, x_val, y_val)

    return run_epochs(
        net, data.train.x.to(dev), data.train.y.to(dev), epochs=epochs, batch_size=batch_size, seed=seed,
        step=lambda xb, yb, _: batch_step(xb, yb), measure=measure, what=what,
    )


def _optimizer(net: nn.Module, lr: float | None) -> torch.optim.Optimizer:
    return torch.optim.Adam(net.parameters()) if lr is None else torch.optim.Adam(net.parameters(), lr=lr)


def free_adversarial_training(
    net: nn.Module,
    data: Dataset,
    *,
    eps: float,
    replays: int = 4,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> TrainResult:
    """Adversarial training "for free" (Shafahi et al. 2019), in place.

    For each minibatch, ``replays`` times: one forward/backward pass gives
    the gradients of the loss on ``x + delta`` with respect to both the
    weights (an optimiser step) and ``delta`` (``delta <- clip(delta + eps *
    sign(grad), -eps, eps)``). ``delta`` carries over to the next minibatch.

    Args:
        net: The network to train (modified in place, moved to ``device``).
        data: Trained on ``data.train``; ``data.val`` accuracy is recorded per epoch.
        eps: L-inf budget (and step) of the perturbation.
        replays: Minibatch replays ``m``. The cost is about ``epochs * replays``
            plain epochs; Shafahi et al. divide the epoch count by ``m`` to
            match a plain run's cost.
        epochs: Passes over the training split.
        batch_size: Minibatch size.
        lr: Adam learning rate (None: PyTorch's default).
        device: Where to train (default CUDA if available).
        seed: Fixes batch order.

    Returns:
        A :class:`~gmsearch.training.TrainResult` with per-epoch ``loss`` and ``val_acc``.
    """
    _check_training(eps, epochs, batch_size)
    if replays < 1:
        raise ValueError(f"replays must be >= 1, got {replays}")
    dev = resolve_device(device)
    net.to(dev)
    optimizer = _optimizer(net, lr)
    delta = torch.zeros((batch_size, *data.train.x.shape[1:]), device=dev)

    def batch_step(xb: Tensor, yb: Tensor) -> Tensor:
        n = len(xb)
        batch_losses = []
        for _ in range(replays):
            d = delta[:n].clone().requires_grad_(True)
            loss = F.cross_entropy(net((xb + d).clamp(0, 1)), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            assert d.grad is not None
            optimizer.step()
            delta[:n] = (d.detach() + eps * d.grad.sign()).clamp(-eps, eps)
            batch_losses.append(loss.detach())
        return torch.stack(batch_losses)

    return _adversarial_training_loop(
        net, data, dev, epochs=epochs, batch_size=batch_size, seed=seed, batch_step=batch_step, what="free AT"
    )


def fast_adversarial_training(
    net: nn.Module,
    data: Dataset,
    *,
    eps: float,
    alpha: float | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> TrainResult:
    """"Fast is better than free" adversarial training (Wong et al. 2020), in place.

    Per minibatch: ``delta ~ U(-eps, eps)``; one FGSM step ``delta <- clip(delta
    + alpha * sign(grad), -eps, eps)`` (images kept in ``[0, 1]``); then a
    weight step on the cross-entropy of ``x + delta``.

    Args:
        net: The network to train (modified in place, moved to ``device``).
        data: Trained on ``data.train``; ``data.val`` accuracy is recorded per epoch.
        eps: L-inf budget.
        alpha: FGSM step; default ``1.25 * eps`` (Wong et al.).
        epochs: Passes over the training split (each costs about two plain epochs).
        batch_size: Minibatch size.
        lr: Adam learning rate (None: PyTorch's default).
        device: Where to train (default CUDA if available).
        seed: Fixes batch order and the random starts.

    Returns:
        A :class:`~gmsearch.training.TrainResult` with per-epoch ``loss`` and ``val_acc``.
    """
    _check_training(eps, epochs, batch_size)
    step = 1.25 * eps if alpha is None else float(alpha)
    if not step > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    dev = resolve_device(device)
    net.to(dev)
    optimizer = _optimizer(net, lr)
    noise = torch.Generator(device=dev).manual_seed(seed)

    def batch_step(xb: Tensor, yb: Tensor) -> Tensor:
        delta = torch.empty_like(xb).uniform_(-eps, eps, generator=noise)
        delta = ((xb + delta).clamp(0, 1) - xb).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(net(xb + delta), yb), delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
        loss = F.cross_entropy(net((xb + delta).clamp(0, 1)), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach().reshape(1)

    return _adversarial_training_loop(
        net, data, dev, epochs=epochs, batch_size=batch_size, seed=seed, batch_step=batch_step, what="fast AT"
    )


def fresh_copy(model: nn.Module, *, seed: int) -> nn.Module:
    """An untrained, trainable network with ``model``'s architecture (a FrozenReference is unwrapped)."""
    torch.manual_seed(seed)
    net = copy.deepcopy(getattr(model, "model", model))
    for module in net.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    for p in net.parameters():
        p.requires_grad_(True)
    return net.train()


def adversarially_trained_copy(
    reference: nn.Module,
    data: Dataset,
    *,
    method: str = "fast",
    eps: float,
    epochs: int = 10,
    seed: int = 0,
    **kwargs: Any,
) -> nn.Module:
    """A fresh copy of ``reference``'s architecture, adversarially trained from scratch.

    Args:
        reference: The network whose architecture is copied (its weights are not used).
        data: Training data.
        method: ``"fast"`` (:func:`fast_adversarial_training`) or ``"free"``
            (:func:`free_adversarial_training`).
        eps: L-inf budget of the training perturbations.
        epochs: Training epochs.
        seed: Fixes initialisation and batch order.
        **kwargs: Further arguments of the training function (``replays``,
            ``alpha``, ``batch_size``, ``lr``, ``device``).

    Returns:
        The trained network, in eval mode.
    """
    trainers: dict[str, Callable[..., TrainResult]] = {
        "fast": fast_adversarial_training, "free": free_adversarial_training,
    }
    if method not in trainers:
        raise ValueError(f"method must be one of {', '.join(sorted(trainers))}, got {method!r}")
    net = fresh_copy(reference, seed=seed)
    trainers[method](net, data, eps=eps, epochs=epochs, seed=seed, **kwargs)
    return net.eval()
