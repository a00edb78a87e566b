"""The optional plugins shipped in plugins/ load by name and work."""

from __future__ import annotations

import torch
from torch import nn

import gmsearch as gms
from gmsearch import plugins


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10)
    )


def test_di_fgsm_loads_by_name_and_attacks() -> None:
    assert "di_fgsm" in plugins.available()
    gms.load_plugin("di_fgsm")
    assert "di_fgsm" in gms.attacks.names()
    origin = {name: o for kind, name, _, o in plugins.table() if kind == "attack"}["di_fgsm"]
    assert origin == "gmsearch_plugins.di_fgsm"

    data = gms.datasets.load("digits", image_size=8)
    x, y = data.val.x[:64], data.val.y[:64]
    model = _tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.train.x), data.train.y).backward()
        opt.step()
    model.eval()
    attack = gms.attacks.create("di_fgsm", eps=0.2, alpha=0.05, steps=5, seed=3)
    adv = attack(model, x, y)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= 0.2 + 1e-6
    assert torch.equal(adv, gms.attacks.create("di_fgsm", eps=0.2, alpha=0.05, steps=5, seed=3)(model, x, y))
    assert gms.accuracy(model, adv, y) < gms.accuracy(model, x, y) - 0.3
    assert "di_fgsm(eps=0.2" in attack.describe()
