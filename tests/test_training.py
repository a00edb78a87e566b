"""Tests for gmsearch.training (the train loop and its fast path) and the exact, cheaper double backward."""

from __future__ import annotations

import copy
import functools
import math
from typing import Any

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmsearch as gms
from gmsearch.data import Dataset, Split
from gmsearch.training import _double_backward
from gmsearch.training import gm_loss as losses
from gmsearch.training import loop as training
from gmsearch.training.loop import TrainingDivergedError, train, train_step


def _split(n: int, seed: int, size: int = 8) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.rand(n, 1, size, size, generator=g), torch.randint(0, 4, (n,), generator=g))


@pytest.fixture
def data() -> Dataset:
    return Dataset(name="tiny", train=_split(41, 0), val=_split(16, 1), test=_split(16, 2), num_classes=4,
                   class_names=("a", "b", "c", "d"))


def _net(seed: int, arch: str = "hand_b") -> nn.Module:
    torch.manual_seed(seed)
    return gms.build(gms.zoo.genome(arch), 1, 4, 8)


def _weights(net: nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().flatten().float() for t in net.state_dict().values()])


# --------------------------------------------------------------------------- the train loop


def test_lam_zero_is_plain_cross_entropy_training(data: Dataset) -> None:
    net, hand = _net(0), _net(0)
    train(net, data, lam=0.0, epochs=2, batch_size=8, seed=3, device="cpu")

    opt = torch.optim.Adam(hand.parameters())
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        hand.train()
        order = torch.randperm(len(data.train), generator=gen)
        for i in range(0, len(order), 8):
            idx = order[i : i + 8]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(hand(data.train.x[idx]), data.train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.testing.assert_close(_weights(net), _weights(hand), rtol=1e-5, atol=1e-6)


def test_history_and_reports_reach_a_pruner(data: Dataset) -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="epoch 1"):
        train(_net(0), data, lam=0.0, epochs=3, batch_size=8, trial=trial, device="cpu")
    assert list(trial.storage.get_trial(trial._trial_id).intermediate_values) == [1]

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    result = train(_net(0), data, lam=0.0, epochs=3, batch_size=8, trial=trial, device="cpu")
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert {"loss", "ce", "gm", "val_acc", "seconds"} <= set(result.final)
    reported = trial.storage.get_trial(trial._trial_id).intermediate_values
    assert reported == {e: r["val_acc"] for e, r in enumerate(result.history, start=1)}


def test_nan_loss_raises_training_diverged(data: Dataset) -> None:
    net = _net(0)
    with torch.no_grad():
        net.head[-1].bias.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="epoch 1"):
        train(net, data, lam=0.0, epochs=2, batch_size=8, device="cpu")


def test_identity_augment_computes_the_cached_reference_gradients_on_the_fly(data: Dataset) -> None:
    ref = _net(9, "hand_a").eval()
    cached, on_the_fly = _net(1), _net(1)
    a = train(cached, data, reference=ref, lam=1.0, epochs=2, batch_size=8, seed=5, device="cpu")
    b = train(on_the_fly, data, reference=ref, lam=1.0, epochs=2, batch_size=8, seed=5, device="cpu",
              augment=lambda x: x)
    torch.testing.assert_close(_weights(cached), _weights(on_the_fly), rtol=1e-4, atol=1e-5)
    assert a.final["gm"] == pytest.approx(b.final["gm"], abs=1e-5)


def test_a_trailing_batch_of_one_is_skipped(data: Dataset) -> None:
    net = _net(0)  # BatchNorm would raise on a batch of one in training mode
    result = train(net, data, lam=0.0, epochs=1, batch_size=20, device="cpu")  # 41 = 20 + 20 + 1
    assert math.isfinite(result.final["loss"])
    # the optimiser stepped twice, not three times
    opt_steps = {}

    def count(original: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        opt_steps[len(opt_steps)] = args[2].shape[0]
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "train_step", functools.partial(count, training.train_step))
        train(_net(0), data, lam=0.0, epochs=1, batch_size=20, device="cpu")
    assert list(opt_steps.values()) == [20, 20]


def test_train_step_returns_device_tensors_without_syncing(data: Dataset) -> None:
    net = _net(0)
    opt = torch.optim.Adam(net.parameters())
    ref = _net(1, "hand_a").eval()
    x, y = data.train.x[:8], data.train.y[:8]
    out = train_step(net, opt, x, y, losses.input_gradients(ref, x, y))
    assert isinstance(out, torch.Tensor) and out.shape == (3,) and out.device == x.device
    assert out[0].item() == pytest.approx(out[1].item() + out[2].item(), abs=1e-6)


def test_fast_path_trains_like_pytorchs_own_double_backward(data: Dataset) -> None:
    ref = _net(9, "hand_a").eval()
    fast, slow = _net(2, "hand_a"), _net(2, "hand_a")
    train(fast, data, reference=ref, lam=1.0, epochs=2, batch_size=8, seed=1, device="cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training.losses, "gm_objective",
                   functools.partial(losses.gm_objective, fast_double_backward=False))
        train(slow, data, reference=ref, lam=1.0, epochs=2, batch_size=8, seed=1, device="cpu")
    torch.testing.assert_close(_weights(fast), _weights(slow), rtol=1e-4, atol=1e-5)


def test_channels_last_is_the_same_training_on_cpu(data: Dataset) -> None:
    ref = _net(9, "hand_a").eval()
    a, b = _net(3), _net(3)
    train(a, data, reference=ref, lam=1.0, epochs=1, batch_size=8, device="cpu")
    train(b, data, reference=ref, lam=1.0, epochs=1, batch_size=8, device="cpu", channels_last=True)
    torch.testing.assert_close(_weights(a), _weights(b), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- exact, cheaper double backward


@pytest.mark.parametrize("arch", ["hand_a", "hand_b"])
def test_fast_double_backward_is_exact_in_float64(arch: str) -> None:
    """Values, parameter gradients and BatchNorm running statistics match PyTorch's own double backward."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (12,), generator=g)
    ref = _net(7, "hand_a").double().eval()
    ref_grad = losses.input_gradients(ref, x, y)
    child = _net(8, arch).double().train()
    results = []
    for fast in (True, False):
        net = copy.deepcopy(child)
        ce, gm = losses.gm_objective(net, x, y, ref_grad, fast_double_backward=fast)
        grads = torch.autograd.grad(ce + 0.7 * gm, list(net.parameters()))
        results.append((ce, gm, grads, [b.clone() for b in net.buffers()]))
    (ce1, gm1, g1, b1), (ce2, gm2, g2, b2) = results
    assert ce1.item() == pytest.approx(ce2.item(), abs=1e-12)
    assert gm1.item() == pytest.approx(gm2.item(), abs=1e-12)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for a, b in zip(b1, b2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(3, 2, 2, 3), (5, 2), (3, 2, 4)])
def test_batchnorm_double_backward_passes_gradgradcheck(affine: bool, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    if affine:
        fn = functools.partial(_double_backward._BatchNormTrain.apply)
        args: tuple[torch.Tensor, ...] = (x, w, b)

        def bn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return fn(x, w, b, None, None, 0.1, 1e-5)
    else:
        args = (x,)

        def bn(x: torch.Tensor) -> torch.Tensor:  # type: ignore[misc]
            return _double_backward._BatchNormTrain.apply(x, None, None, None, None, 0.1, 1e-5)

    assert torch.autograd.gradcheck(bn, args)
    assert torch.autograd.gradgradcheck(bn, args)


def test_cat_and_pool_double_backward_pass_gradgradcheck() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: _double_backward._Cat.apply(1, a, b) ** 2, (a, b))
    assert torch.autograd.gradgradcheck(lambda a: _double_backward._AdaptiveAvgPool.apply(a, (3, 2)) ** 2, (a,))


def test_the_routing_mode_leaves_other_calls_alone() -> None:
    bn = nn.BatchNorm2d(3).eval()  # eval mode: PyTorch's own path, running statistics untouched
    x = torch.rand(4, 3, 5, 5, requires_grad=True)
    with _double_backward.CheapDoubleBackward():
        out = bn(x)
        joined = torch.cat([x, x], dim=-1)
        with torch.no_grad():
            pooled = F.adaptive_avg_pool2d(x, 2)
    assert out.grad_fn is not None and "Native" in type(out.grad_fn).__name__
    assert "_Cat" in type(joined.grad_fn).__name__
    assert pooled.grad_fn is None
    # a batch of one value per channel falls through to PyTorch, which refuses it
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        with _double_backward.CheapDoubleBackward():
            nn.BatchNorm1d(3).train()(torch.rand(1, 3, requires_grad=True))


def test_amp_is_ignored_on_cpu_and_memory_is_released(data: Dataset) -> None:
    a, b = _net(4), _net(4)
    train(a, data, lam=0.0, epochs=1, batch_size=8, device="cpu")
    train(b, data, lam=0.0, epochs=1, batch_size=8, device="cpu", amp=True)
    torch.testing.assert_close(_weights(a), _weights(b), rtol=0, atol=0)
    training.release_memory("cpu")  # callable any time, on any platform
