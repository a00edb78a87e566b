"""Tests for gmsearch.architectures: every registered torchvision model on small images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gmsearch.nets import architectures

BUILTIN = ("resnet18", "resnet34", "vgg11_bn", "vgg16_bn", "densenet121", "squeezenet1_1")


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(2)


def test_builtins_registered_with_descriptions() -> None:
    assert set(BUILTIN) <= set(architectures.names())
    for entry in architectures.registry.entries():
        if entry.name in BUILTIN:
            assert entry.description and entry.origin == "builtin"


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (1, 16)])
def test_forward_on_small_images(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    net = architectures.create(name, in_channels=channels, num_classes=7, image_size=size).eval()
    with torch.no_grad():
        out = net(torch.rand(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert out.std() > 0  # not a dead network


def test_resnet_stem_adapted() -> None:
    net = architectures.create("resnet34", in_channels=1, num_classes=10, image_size=28)
    assert isinstance(net.conv1, nn.Conv2d)
    assert net.conv1.in_channels == 1 and net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    assert net.fc.out_features == 10


def test_densenet_and_squeezenet_stems_adapted() -> None:
    dense = architectures.create("densenet121", in_channels=3, num_classes=10, image_size=32)
    assert dense.features.conv0.kernel_size == (3, 3) and dense.features.conv0.stride == (1, 1)
    assert isinstance(dense.features.pool0, nn.Identity)
    squeeze = architectures.create("squeezenet1_1", in_channels=1, num_classes=10, image_size=28)
    convs = [m for m in squeeze.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 1 and convs[0].stride == (1, 1) and convs[0].kernel_size == (3, 3)
    assert isinstance(squeeze.features[0], architectures.CentreInputs)


@pytest.mark.parametrize(("size", "kept_pools"), [(32, 5), (28, 4), (16, 4), (8, 3)])
def test_vgg_drops_only_pools_that_would_empty_the_map(size: int, kept_pools: int) -> None:
    net = architectures.create("vgg11_bn", in_channels=3, num_classes=10, image_size=size)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.features) == kept_pools
    assert isinstance(net.classifier, nn.Linear) and net.classifier.in_features == 512
    # materialised on the CPU with fresh BatchNorm statistics (the model is built on 'meta')
    assert all(t.device.type == "cpu" for t in [*net.parameters(), *net.buffers()])
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn.running_var is not None and torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_input_gradients_flow_twice() -> None:
    """The GM loss differentiates input gradients: double backprop must work."""
    net = architectures.create("resnet18", in_channels=1, num_classes=3, image_size=8)
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    loss = nn.functional.cross_entropy(net(x), torch.tensor([0, 2]))
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    grad.pow(2).sum().backward()
    assert net.conv1.weight.grad is not None and torch.isfinite(net.conv1.weight.grad).all()


@pytest.mark.parametrize(("kwargs", "bad"), [
    ({"in_channels": 0, "num_classes": 10, "image_size": 32}, "in_channels"),
    ({"in_channels": 3, "num_classes": 1, "image_size": 32}, "num_classes"),
    ({"in_channels": 3, "num_classes": 10, "image_size": 4}, "image_size"),
])
def test_bad_arguments(kwargs: dict[str, int], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        architectures.create("resnet18", **kwargs)


def test_unknown_architecture_lists_available() -> None:
    with pytest.raises(KeyError, match=r"available: .*resnet18"):
        architectures.get("alexnet")
