from __future__ import annotations

import copy
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


# --------------------------------------------------------------------------- BatchNorm in the GM term


def _bn_net(seed: int, arch: str) -> nn.Module:
    import gmsearch as gms

    torch.manual_seed(seed)
    return gms.build(gms.zoo.genome(arch), 1, 4, 8).double()


def _slow_gm(child: nn.Module, x: torch.Tensor, y: torch.Tensor, ref_grad: torch.Tensor, mode: str
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """CE and GM the slow way, one sample's input gradient at a time (float64), for each BatchNorm mode."""
    bns = [m for m in child.modules() if isinstance(m, nn.BatchNorm2d)]
    params = dict(child.named_parameters())
    grads = []
    if mode == "batch":  # row i of d(sum of losses)/dX, through the batch statistics: only x_i varies
        buffers = {k: b.clone() for k, b in child.named_buffers()}  # copies take the per-sample updates
        for i in range(len(x)):
            xi = x[i : i + 1].clone().requires_grad_(True)
            xs = torch.cat([x[:i], xi, x[i + 1 :]])
            logits = torch.func.functional_call(child, {**params, **buffers}, (xs,))
            (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xi, create_graph=True)
            grads.append(g)
        ce = F.cross_entropy(child(x), y)  # train mode: updates the running statistics once
    elif mode == "running":  # each sample alone through the eval-mode network, after the update
        ce = F.cross_entropy(child(x), y)
        child.eval()
        for i in range(len(x)):
            xi = x[i : i + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(child(xi), y[i : i + 1]), xi, create_graph=True)
            grads.append(g)
        child.train()
    else:  # detached: batch statistics (functions of the parameters) are constants for each sample alone
        stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

        def record(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            var, mean = torch.var_mean(inp[0], dim=(0, 2, 3), correction=0)
            stats[m] = (mean, var)

        def replace(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            assert isinstance(m, nn.BatchNorm2d)
            mean, var = stats[m]
            scale = (m.weight / (var + m.eps).sqrt()).view(1, -1, 1, 1)
            return (inp[0] - mean.view(1, -1, 1, 1)) * scale + m.bias.view(1, -1, 1, 1)

        hooks = [m.register_forward_hook(record) for m in bns]
        ce = F.cross_entropy(child(x), y)
        for h in hooks:
            h.remove()
        hooks = [m.register_forward_hook(replace) for m in bns]
        child.eval()  # eval mode: no updates; the hook replaces the output
        for i in range(len(x)):
            xi = x[i : i + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(child(xi), y[i : i + 1]), xi, create_graph=True)
            grads.append(g)
        child.train()
        for h in hooks:
            h.remove()
    gc = torch.cat(grads).flatten(1)
    gr = ref_grad.flatten(1)
    gm = ((gc * gr).sum(1) / (gc.norm(dim=1) * gr.norm(dim=1))).mean()
    return ce, gm


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("arch", ["hand_a", "hand_b"])
@pytest.mark.parametrize("mode", ["batch", "running", "detached"])
def test_gm_batchnorm_modes_match_per_sample_float64_reference(mode: str, arch: str, fast: bool) -> None:
    """CE, GM, their parameter gradients and the running statistics of each mode match a slow per-sample loop."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(10, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (10,), generator=g)
    ref = _bn_net(7, "hand_a").eval()
    ref_grad = losses.input_gradients(ref, x, y)
    child = _bn_net(8, arch).train()
    with torch.no_grad():  # running statistics away from their initial values (they matter for "running")
        child(torch.rand(10, 1, 8, 8, generator=g, dtype=torch.float64) * 3)
    slow = copy.deepcopy(child)
    ce, gm = losses.gm_objective(child, x, y, ref_grad, batchnorm=mode, fast_double_backward=fast)
    got = torch.autograd.grad(ce + 0.7 * gm, list(child.parameters()))
    ce_slow, gm_slow = _slow_gm(slow, x, y, ref_grad, mode)
    want = torch.autograd.grad(ce_slow + 0.7 * gm_slow, list(slow.parameters()))
    assert ce.item() == pytest.approx(ce_slow.item(), abs=1e-12)
    assert gm.item() == pytest.approx(gm_slow.item(), abs=1e-10)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)
    for (name, a), b in zip(child.named_buffers(), slow.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)
    assert child.training and all(m.training for m in child.modules())


def test_gm_batchnorm_modes_differ_and_unknown_mode_is_named() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g)
    ref_grad = losses.input_gradients(_bn_net(3, "hand_a").eval(), x, y)
    child = _bn_net(4, "hand_b").train()
    values = {m: losses.gradient_misalignment(copy.deepcopy(child), x, y, ref_grad, batchnorm=m).item()
              for m in losses.BATCHNORM_MODES}
    assert len({round(v, 8) for v in values.values()}) == 3, values
    with pytest.raises(ValueError, match="gm_batchnorm must be one of batch, running, detached, got 'eval'"):
        losses.gm_objective(child, x, y, ref_grad, batchnorm="eval")


def test_gm_batchnorm_option_reaches_training_and_is_checked_in_config() -> None:
    import gmsearch as gms
    from gmsearch import config
    from gmsearch.data import Dataset, Split

    g = torch.Generator().manual_seed(2)

    def split(n: int) -> Split:
        return Split(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))

    data = Dataset(name="tiny", train=split(24), val=split(8), test=split(8), num_classes=4,
                   class_names=("a", "b", "c", "d"))
    torch.manual_seed(0)
    ref = gms.build(gms.zoo.genome("hand_a"), 1, 4, 8).eval()
    weights = {}
    for mode in losses.BATCHNORM_MODES:
        torch.manual_seed(1)
        net = gms.build(gms.zoo.genome("hand_b"), 1, 4, 8)
        gms.train(net, data, reference=ref, epochs=1, batch_size=8, device="cpu", gm_batchnorm=mode)
        weights[mode] = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert not torch.equal(weights["batch"], weights["running"])
    assert not torch.equal(weights["batch"], weights["detached"])
    with pytest.raises(ValueError, match="gm_batchnorm must be one of batch, running, detached, got 'eval'"):
        gms.train(net, data, reference=ref, epochs=1, device="cpu", gm_batchnorm="eval")
    assert config.parse({"training": {"gm_batchnorm": "running"}}).training.gm_batchnorm == "running"
    assert config.parse({}).training.gm_batchnorm == "batch"
    with pytest.raises(config.ConfigError, match=f"one of {', '.join(losses.BATCHNORM_MODES)}, got 'eval'"):
        config.parse({"training": {"gm_batchnorm": "eval"}})
