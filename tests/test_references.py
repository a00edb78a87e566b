"""Reference zoo: user modules, checkpoints, and refusing checkpoints that are not plain tensors."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
from torch import nn

import gmsearch as gms


@pytest.fixture(scope="module")
def data() -> gms.datasets.Dataset:
    return gms.datasets.load("digits", image_size=8)


def test_names_include_zoo_and_torchvision() -> None:
    names = gms.architectures.names()
    for name in ("hand_a", "hand_b", "resnet18", "resnet34", "vgg11_bn", "vgg16_bn", "densenet121", "squeezenet1_1"):
        assert name in names
    with pytest.raises(KeyError, match="available: .*hand_a"):
        gms.references.get("resnet999", gms.datasets.load("digits", image_size=8))


def test_user_module_is_frozen_and_measured(data: gms.datasets.Dataset) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    ref = gms.references.get(net, data, device="cpu")
    assert isinstance(ref, gms.references.FrozenReference)
    assert ref.clean_acc is not None and 0.0 <= ref.clean_acc <= 1.0
    assert not any(p.requires_grad for p in ref.parameters())
    ref.train()
    assert not ref.training


def test_checkpoint_path_with_arch(tmp_path: Path, data: gms.datasets.Dataset) -> None:
    net = gms.references.build_architecture("hand_b", data)
    path = tmp_path / "hand_b.pt"
    torch.save(net.state_dict(), path)
    ref = gms.references.get(path, data, arch="hand_b", device="cpu")
    for a, b in zip(ref.model.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="arch"):
        gms.references.get(path, data)
    with pytest.raises(ValueError, match="does not fit architecture 'hand_a'"):
        gms.references.get(path, data, arch="hand_a")


def test_checkpoint_that_is_not_plain_tensors_is_rejected(tmp_path: Path, data: gms.datasets.Dataset) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "when": datetime.date(2020, 1, 1)}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        gms.references.get(path, data, arch="hand_a")
    path2 = tmp_path / "notdict.pt"
    torch.save([torch.ones(2)], path2)
    with pytest.raises(ValueError, match="not a state dict"):
        gms.references.load_checkpoint(path2)
