"""Integrated gradients and pixel distance (Fig. 3); JPEG / bilateral wrappers and adversarial training (Table 6)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gmsearch as gms
from gmsearch.evaluation import accuracy
from gmsearch.evaluation.attribution import (
    attribution_figure,
    integrated_gradients,
    normalize_maps,
    total_pixel_distance,
    write_attribution_png,
)
from gmsearch.nets.references import FrozenReference
from gmsearch.training.defenses import (
    BilateralDefense,
    JPEGDefense,
    adversarially_trained_copy,
    bilateral_filter,
    fast_adversarial_training,
    free_adversarial_training,
    jpeg_compress,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _smooth_net(channels: int = 1, size: int = 6, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, 16), nn.Tanh(), nn.Linear(16, 4))


# --------------------------------------------------------------------------- integrated gradients


def test_integrated_gradients_match_captum_and_satisfy_completeness() -> None:
    from captum.attr import IntegratedGradients

    net = _smooth_net(channels=3)
    torch.manual_seed(1)
    x, y = torch.rand(5, 3, 6, 6), torch.tensor([0, 1, 2, 3, 0])
    raw = integrated_gradients(net, x, y, steps=64, normalize=False, reduce_channels=False)
    direct = IntegratedGradients(net).attribute(x, baselines=torch.zeros_like(x), target=y, n_steps=64)
    torch.testing.assert_close(raw, direct)
    # completeness: attributions sum to f_y(x) - f_y(baseline)
    with torch.no_grad():
        gap = net(x).gather(1, y[:, None]).squeeze(1) - net(torch.zeros_like(x)).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(raw.flatten(1).sum(1), gap, atol=1e-4, rtol=1e-3)
    # a non-zero baseline too
    raw_half = integrated_gradients(net, x, y, baseline=0.5, steps=64, normalize=False, reduce_channels=False)
    with torch.no_grad():
        logit = net(x).gather(1, y[:, None]).squeeze(1)
        gap_half = logit - net(torch.full_like(x, 0.5)).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(raw_half.flatten(1).sum(1), gap_half, atol=1e-4, rtol=1e-3)


def test_integrated_gradients_are_normalised_per_image_to_minus_one_one() -> None:
    net = _smooth_net(channels=3)
    x = torch.rand(4, 3, 6, 6)
    maps = integrated_gradients(net, x, steps=16)  # labels: the net's own predictions
    assert maps.shape == (4, 6, 6)
    torch.testing.assert_close(maps.flatten(1).abs().amax(1), torch.ones(4))
    raw = integrated_gradients(net, x, steps=16, normalize=False)
    torch.testing.assert_close(maps, normalize_maps(raw))
    assert torch.equal(torch.sign(maps), torch.sign(raw)), "normalising keeps the sign (red / green)"
    assert normalize_maps(torch.zeros(2, 3, 3)).abs().sum() == 0
    assert net.training, "the net's mode is restored"


def test_total_pixel_distance_properties() -> None:
    torch.manual_seed(0)
    a, b, c = (normalize_maps(torch.randn(3, 5, 5)) for _ in range(3))
    assert total_pixel_distance(a, a) == 0.0
    assert total_pixel_distance(a, b) == pytest.approx(total_pixel_distance(b, a))
    assert total_pixel_distance(a, b) > 0
    assert total_pixel_distance(a, c) <= total_pixel_distance(a, b) + total_pixel_distance(b, c) + 1e-6
    ones = torch.ones(2, 4, 4)
    assert total_pixel_distance(ones, -ones) == pytest.approx(2.0), "opposite maps: the maximum, 2"
    assert total_pixel_distance(ones, -ones, reduction="sum") == pytest.approx(32.0)
    assert total_pixel_distance(a, b, reduction="sum") == pytest.approx(25 * total_pixel_distance(a, b))
    with pytest.raises(ValueError, match="shape"):
        total_pixel_distance(a, b[:2])
    with pytest.raises(ValueError, match="reduction"):
        total_pixel_distance(a, b, reduction="max")  # type: ignore[arg-type]


def test_attribution_figure_and_png(tmp_path: Path) -> None:
    net_a, net_b = _smooth_net(seed=0), _smooth_net(seed=1)
    x, y = torch.rand(2, 1, 6, 6), torch.tensor([1, 2])
    maps = {"Ref": integrated_gradients(net_a, x, y, steps=8), "NE+GM": integrated_gradients(net_b, x, y, steps=8)}
    fig = attribution_figure(x, maps, labels=["one", "two"])
    assert len(fig.data) == 2 * (1 + 2)
    assert "distance to Ref" in fig.layout.annotations[2].text
    html = tmp_path / "fig.html"
    fig.write_html(str(html), include_plotlyjs=True)
    assert "plotly" in html.read_text()[:5000].lower()
    png = write_attribution_png(tmp_path / "fig.png", x, maps)
    assert png.read_bytes()[:4] == b"\x89PNG"
    rgb = attribution_figure(torch.rand(1, 3, 6, 6), {"Ref": torch.zeros(1, 6, 6)})
    assert rgb.data[0].type == "image"
    with pytest.raises(ValueError, match="reference"):
        attribution_figure(x, maps, reference="nope")


# --------------------------------------------------------------------------- input transformations


def _naive_bilateral(x: Tensor, k: int, sigma_space: float, sigma_color: float) -> Tensor:
    r = k // 2
    padded = F.pad(x, (r, r, r, r), mode="reflect")
    out = torch.empty_like(x)
    for n in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                centre = x[n, :, i, j]
                total, weight = torch.zeros(x.shape[1]), 0.0
                for di in range(-r, r + 1):
                    for dj in range(-r, r + 1):
                        pixel = padded[n, :, i + r + di, j + r + dj]
                        w = math.exp(-(di * di + dj * dj) / (2 * sigma_space**2)) * math.exp(
                            -float(((pixel - centre) ** 2).sum()) / (2 * sigma_color**2)
                        )
                        total += w * pixel
                        weight += w
                out[n, :, i, j] = total / weight
    return out


def test_bilateral_filter_matches_a_naive_loop_and_smooths_noise() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 5, 6)
    fast = bilateral_filter(x, kernel_size=3, sigma_space=1.0, sigma_color=0.3, chunk=1)
    torch.testing.assert_close(fast, _naive_bilateral(x, 3, 1.0, 0.3), atol=1e-5, rtol=1e-5)
    flat = torch.full((1, 1, 8, 8), 0.4)
    torch.testing.assert_close(bilateral_filter(flat), flat), "a constant image is unchanged"
    noisy = (flat + 0.05 * torch.randn_like(flat)).clamp(0, 1)
    smoothed = bilateral_filter(noisy, sigma_color=0.2)
    assert (smoothed - 0.4).abs().mean() < 0.7 * (noisy - 0.4).abs().mean(), "noise is smoothed away"
    with pytest.raises(ValueError, match="odd"):
        bilateral_filter(x, kernel_size=4)


def test_jpeg_compress_changes_noise_keeps_shape_and_range() -> None:
    torch.manual_seed(0)
    for channels in (1, 3):
        x = torch.rand(3, channels, 16, 16)
        out = jpeg_compress(x, quality=30)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        assert (out - x).abs().mean() > 0.05, "JPEG destroys pixel noise"
    smooth = torch.full((1, 3, 16, 16), 0.5)
    assert (jpeg_compress(smooth, quality=90) - smooth).abs().max() < 0.01
    with pytest.raises(ValueError, match="quality"):
        jpeg_compress(smooth, quality=0)


@pytest.mark.parametrize("defense", ["jpeg", "bilateral"])
def test_defense_wrappers_preprocess_and_pass_gradients_straight_through(defense: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    wrapped = JPEGDefense(net, quality=40) if defense == "jpeg" else BilateralDefense(net, sigma_color=0.5)
    x = torch.rand(4, 3, 8, 8)
    out = wrapped(x)
    assert out.shape == (4, 5)
    transformed = wrapped.transform(x)
    assert transformed.shape == x.shape and float(transformed.min()) >= 0 and float(transformed.max()) <= 1
    assert not torch.allclose(transformed, x, atol=1e-3), "the defense changes the input"
    torch.testing.assert_close(out, net(transformed))
    x_grad = x.clone().requires_grad_(True)
    wrapped(x_grad)[:, 0].sum().backward()
    assert x_grad.grad is not None
    expected = net[1].weight[0].view(3, 8, 8).expand(4, 3, 8, 8)  # a linear net: BPDA gives its own gradient
    torch.testing.assert_close(x_grad.grad, expected)


# --------------------------------------------------------------------------- adversarial training


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )


@pytest.fixture(scope="module")
def digits() -> gms.datasets.Dataset:
    return gms.datasets.load("digits", seed=0, image_size=8)


def _robust_acc(net: nn.Module, data: gms.datasets.Dataset) -> float:
    attack = gms.attacks.create("pgd_linf", eps=0.15, alpha=0.04, steps=10)
    return accuracy(net, attack(net, data.test.x, data.test.y), data.test.y)


def test_fast_and_free_adversarial_training_beat_plain_training(digits: gms.datasets.Dataset) -> None:
    """One seed on tiny digits: fast AT clearly (0.21 -> 0.47 when written), free AT modestly (-> 0.33)."""
    plain = _cnn(0)
    gms.train(plain, digits, lam=0.0, epochs=8, seed=0)
    fast = _cnn(0)
    start = copy.deepcopy(fast.state_dict())
    result = fast_adversarial_training(fast, digits, eps=0.15, epochs=6, seed=0)
    assert len(result.history) == 6 and all(math.isfinite(h["loss"]) for h in result.history)
    assert any(not torch.equal(start[k], v) for k, v in fast.state_dict().items()), "weights changed"
    free = _cnn(0)
    free_adversarial_training(free, digits, eps=0.15, replays=4, epochs=4, seed=0)
    plain_rob, fast_rob, free_rob = (_robust_acc(n, digits) for n in (plain, fast, free))
    for net in (fast, free):
        assert accuracy(net, digits.test.x, digits.test.y) > 0.7, "still learns the digits"
    assert fast_rob > plain_rob + 0.1
    assert free_rob > plain_rob


def test_adversarially_trained_copy_leaves_the_reference_alone(digits: gms.datasets.Dataset) -> None:
    ref = FrozenReference(_cnn(3), name="tiny")
    before = copy.deepcopy(ref.state_dict())
    copy_net = adversarially_trained_copy(ref, digits, method="free", eps=0.1, epochs=1, replays=2)
    assert not isinstance(copy_net, FrozenReference) and not copy_net.training
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    assert any(not torch.equal(before[f"model.{k}"], v) for k, v in copy_net.state_dict().items())
    with pytest.raises(ValueError, match="method"):
        adversarially_trained_copy(ref, digits, method="pgd", eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        fast_adversarial_training(_cnn(0), digits, eps=0.0)
