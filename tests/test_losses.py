from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gmsearch.training import gm_loss as losses


def _net(seed: int, channels: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).double()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(5, 1, 6, 6, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])


def _per_sample_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> list[torch.Tensor]:
    """Independent computation: one sample at a time."""
    grads = []
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        loss = F.cross_entropy(model(xi), y[i : i + 1])
        (g,) = torch.autograd.grad(loss, xi, create_graph=create_graph)
        grads.append(g.flatten())
    return grads


def test_eq1_matches_independent_per_sample_computation(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    child, ref = _net(1), _net(2)
    ref_grad = losses.input_gradients(ref, x, y)
    gm = losses.gradient_misalignment(child, x, y, ref_grad)
    gc = _per_sample_grad(child, x, y, create_graph=False)
    gr = _per_sample_grad(ref, x, y, create_graph=False)
    expected = sum(float(a @ b / (a.norm() * b.norm())) for a, b in zip(gc, gr, strict=True)) / len(x)
    assert gm.item() == pytest.approx(expected, abs=1e-10)
    assert -1.0 <= gm.item() <= 1.0


def test_gm_of_a_network_with_itself_is_one(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    net = _net(3)
    assert losses.gradient_misalignment(net, x, y, losses.input_gradients(net, x, y)).item() == pytest.approx(1.0)
    flipped = -losses.input_gradients(net, x, y)
    assert losses.gradient_misalignment(net, x, y, flipped).item() == pytest.approx(-1.0)


def test_parameter_gradient_matches_hand_written_double_backprop(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    child, ref = _net(4), _net(5)
    ref_grad = losses.input_gradients(ref, x, y)
    gm = losses.gradient_misalignment(child, x, y, ref_grad)
    got = torch.autograd.grad(gm, list(child.parameters()))

    # reference implementation: per-sample loop, explicit cosine formula
    gc = _per_sample_grad(child, x, y, create_graph=True)
    gr = [g.detach() for g in _per_sample_grad(ref, x, y, create_graph=False)]
    manual = torch.stack([(a * b).sum() / (a.norm() * b.norm()) for a, b in zip(gc, gr, strict=True)]).mean()
    want = torch.autograd.grad(manual, list(child.parameters()))
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-7)
    assert any(a.abs().sum() > 0 for a in got)


def test_parameter_gradient_matches_finite_differences(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    child, ref = _net(6), _net(7)
    ref_grad = losses.input_gradients(ref, x, y)
    weight = child[3].weight.detach().clone()

    def gm_of_last_weight(w: torch.Tensor) -> torch.Tensor:
        xi = x.detach().requires_grad_(True)
        logits = torch.func.functional_call(child, {"3.weight": w}, (xi,))
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xi, create_graph=True)
        return losses.cosine_per_sample(g, ref_grad).mean()

    assert torch.autograd.gradcheck(gm_of_last_weight, (weight.requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_zero_gradient_gives_finite_loss_and_gradients(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    child = _net(8)
    zero = torch.zeros_like(x)
    gm = losses.gradient_misalignment(child, x, y, zero)
    assert gm.item() == 0.0
    gm.backward()
    assert all(torch.isfinite(p.grad).all() for p in child.parameters() if p.grad is not None)
    # a child whose input gradient is exactly zero (constant output)
    const = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).double()
    nn.init.zeros_(const[1].weight)
    val = losses.gradient_misalignment(const, x, y, torch.ones_like(x))
    val.backward()
    assert math.isfinite(val.item())
    assert torch.isfinite(const[1].weight.grad).all()


def test_variants_registry_and_values(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert {"cosine", "abs_cosine", "logsumexp"} <= set(losses.names())
    cos = torch.tensor([0.5, -0.5, 1.0])
    assert losses.get("cosine")(cos).item() == pytest.approx(1.0 / 3)
    assert losses.get("abs_cosine")(cos).item() == pytest.approx(2.0 / 3)
    lse = losses.get("logsumexp")(cos).item()
    assert cos.mean().item() <= lse <= cos.max().item()
    x, y = batch
    with pytest.raises(KeyError, match="available: abs_cosine, cosine, logsumexp"):
        losses.gradient_misalignment(_net(1), x, y, torch.zeros_like(x), variant="nope")


def test_shape_errors_are_clear(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    with pytest.raises(ValueError, match="ref_grad must have the shape of x"):
        losses.gradient_misalignment(_net(1), x, y, torch.zeros(5, 36, dtype=torch.float64))
    with pytest.raises(ValueError, match="y must have shape"):
        losses.gradient_misalignment(_net(1), x, y[:3], torch.zeros_like(x))
