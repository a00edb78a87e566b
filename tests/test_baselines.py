"""Ref+GM has one builder: the reference's own architecture, initialised as its zoo factory does."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gmsearch.data import Dataset
from gmsearch.nets import references
from gmsearch.nets.references import FrozenReference
from gmsearch.search.baselines import reference_architecture
from gmsearch.training.defenses import fresh_copy


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_zoo_reference_is_rebuilt_by_its_factory_with_its_own_init(tiny_data: Callable[[int], Dataset]) -> None:
    data = tiny_data(8)
    trained = references.build_architecture("resnet18", data)
    for ref in (FrozenReference(trained, name="resnet18"), FrozenReference(trained, name="resnet18@weights.pt")):
        net = reference_architecture(ref, data, seed=3)
        torch.manual_seed(3)
        assert _same(net, references.build_architecture("resnet18", data))
        assert all(p.requires_grad for p in net.parameters()) and net.training
    # torchvision's init (Kaiming normal, fan-out) is not what resetting every layer gives
    assert not _same(reference_architecture(FrozenReference(trained, name="resnet18"), data, seed=3),
                     fresh_copy(trained, seed=3))


def test_a_reference_of_no_zoo_architecture_is_copied_with_every_layer_reset(
    tiny_data: Callable[[int], Dataset],
) -> None:
    data = tiny_data(8)
    own = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(4))
    own(torch.zeros(1, 1, 8, 8))
    ref = FrozenReference(own, name="Sequential")
    net = reference_architecture(ref, data, seed=5)
    assert _same(net, fresh_copy(ref, seed=5))
    assert not _same(net, own) and all(p.requires_grad for p in net.parameters())
