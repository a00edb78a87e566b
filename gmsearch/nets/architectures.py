"""Reference-network architectures: a registry of ``nn.Module`` factories.

The paper (section 4.1) uses torchvision's ResNet-34 as the reference network
and ResNet-18, VGG, DenseNet and SqueezeNet as further sources of adversarial
examples, on CIFAR-10 (3x32x32) and MNIST-like data (1x28x28). ImageNet stems
shrink such small images to almost nothing, so every built-in model is
torchvision's own (``weights=None``) with the standard small-image adaptation:

- ``resnet*``: first conv 3x3 stride 1 on ``in_channels``; no initial max-pool.
- ``vgg*_bn``: first conv on ``in_channels``; max-pools that would shrink the
  map below 1x1 (the fifth one at 28x28 and 16x16) are dropped; global average
  pooling and a single linear classifier (512 -> classes), as in the usual
  CIFAR VGG.
- ``densenet121``: ``conv0`` 3x3 stride 1 on ``in_channels``; no ``pool0``.
- ``squeezenet1_1``: first conv 3x3 stride 1 (padding 1) on ``in_channels``.

Inputs are in ``[0, 1]``. ResNet, VGG-BN and DenseNet follow their first conv
with BatchNorm, which absorbs any per-channel affine input normalisation, so
they take inputs as they are; SqueezeNet has no BatchNorm, so it maps inputs
to ``[-1, 1]`` inside the model (:class:`CentreInputs`).

Factories have the signature ``(in_channels, num_classes, image_size) -> nn.Module``
and register with ``@register(name)``; their docstring's first line is shown by
``gmsearch plugins``.

Example:
    >>> from gmsearch import architectures
    >>> net = architectures.create("resnet18", in_channels=1, num_classes=10, image_size=28)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models

from gmsearch.registry import Registry

__all__ = [
    "ArchFactory",
    "CentreInputs",
    "create",
    "get",
    "names",
    "register",
    "registry",
]

#: ``(in_channels, num_classes, image_size) -> nn.Module``.
ArchFactory = Callable[[int, int, int], nn.Module]

registry = Registry[ArchFactory]("architecture")
register = registry.register
get = registry.get
names = registry.names
create = registry.create


class CentreInputs(nn.Module):
    """Map ``[0, 1]`` inputs to ``[-1, 1]`` (a fixed normalisation inside the model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``2 x - 1``."""
        return x * 2.0 - 1.0


def _check(in_channels: int, num_classes: int, image_size: int) -> None:
    for label, value, low in (("in_channels", in_channels, 1), ("num_classes", num_classes, 2),
                              ("image_size", image_size, 8)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{label} must be an int >= {low}, got {value!r}")


def _stem_conv(in_channels: int, out_channels: int, *, bias: bool) -> nn.Conv2d:
    """3x3 stride-1 'same' conv, initialised like torchvision initialises its convs."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


# --------------------------------------------------------------------------- ResNet


def _resnet(builder: Callable[..., models.ResNet], in_channels: int, num_classes: int,
            image_size: int) -> nn.Module:
    _check(in_channels, num_classes, image_size)
    net = builder(weights=None, num_classes=num_classes)
    net.conv1 = _stem_conv(in_channels, 64, bias=False)
    net.maxpool = nn.Identity()
    return net


@register("resnet18")
def resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """torchvision ResNet-18, small-image stem (3x3 stride-1 conv, no max-pool)."""
    return _resnet(models.resnet18, in_channels, num_classes, image_size)


@register("resnet34")
def resnet34(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """torchvision ResNet-34 (the paper's reference), small-image stem (3x3 stride-1 conv, no max-pool)."""
    return _resnet(models.resnet34, in_channels, num_classes, image_size)


# --------------------------------------------------------------------------- VGG


def _vgg(builder: Callable[..., models.VGG], in_channels: int, num_classes: int,
         image_size: int) -> nn.Module:
    _check(in_channels, num_classes, image_size)
    # Built on the meta device: the ImageNet head (25088 -> 4096 -> 4096, ~120M weights) is
    # replaced below, so allocating and initialising it would only cost seconds and memory.
    with torch.device("meta"):
        net = builder(weights=None, num_classes=num_classes)
    layers = list(net.features)
    first = layers[0]
    assert isinstance(first, nn.Conv2d)
    layers[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, stride=1, padding=1)
    size = image_size
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.MaxPool2d):
            if size // 2 < 1:  # this pool would leave no pixels: drop it
                layers[i] = nn.Identity()
            else:
                size //= 2
    net.features = nn.Sequential(*layers)
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    width = [m for m in layers if isinstance(m, nn.Conv2d)][-1].out_channels
    net.classifier = nn.Linear(width, num_classes)
    net = net.to_empty(device="cpu")
    # torchvision's VGG initialisation, applied to the materialised model.
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()  # weight 1, bias 0 and fresh running statistics
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return net


@register("vgg11_bn")
def vgg11_bn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """torchvision VGG-11 with BatchNorm, small-image adaptation (global pool, 512 -> classes head)."""
    return _vgg(models.vgg11_bn, in_channels, num_classes, image_size)


@register("vgg16_bn")
def vgg16_bn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """torchvision VGG-16 with BatchNorm, small-image adaptation (global pool, 512 -> classes head)."""
    return _vgg(models.vgg16_bn, in_channels, num_classes, image_size)


# --------------------------------------------------------------------------- DenseNet


@register("densenet121")
def densenet121(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """torchvision DenseNet-121, small-image stem (3x3 stride-1 conv0, no pool0)."""
    _check(in_channels, num_classes, image_size)
    net = models.densenet121(weights=None, num_classes=num_classes)
    net.features.conv0 = _stem_conv(in_channels, 64, bias=False)
    net.features.pool0 = nn.Identity()
    return net


# --------------------------------------------------------------------------- SqueezeNet


@register("squeezenet1_1")
def squeezenet1_1(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """torchvision SqueezeNet 1.1, small-image stem (3x3 stride-1 conv); inputs centred to [-1, 1]."""
    _check(in_channels, num_classes, image_size)
    net = models.squeezenet1_1(weights=None, num_classes=num_classes)
    first = net.features[0]
    assert isinstance(first, nn.Conv2d)
    stem = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, stride=1, padding=1)
    # torchvision initialises SqueezeNet's convs with kaiming_uniform_ and zero bias.
    nn.init.kaiming_uniform_(stem.weight)
    assert stem.bias is not None
    nn.init.zeros_(stem.bias)
    net.features[0] = stem
    net.features.insert(0, CentreInputs())
    return net
