"""Building networks from genomes: shapes, reconciliation, params, double backward."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gmsearch.nets import zoo
from gmsearch.nets.builder import (
    GenomeNet,
    build,
    count_params,
    estimate_flops,
    estimate_params,
    infer_shapes,
)
from gmsearch.nets.genome import Block, Genome
from gmsearch.search import mutations, prior

BUDGET = mutations.SizeBudget(max_blocks=14, max_params=400_000, in_channels=3, num_classes=10, image_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def conv(src: int, ch: int = 8, k: int = 3, kind: str = "conv") -> Block:
    return Block(kind, (src,), out_channels=ch, kernel_size=k)


def pool(src: int, t: str = "max") -> Block:
    return Block("pool", (src,), pool_type=t)


def run(net: torch.nn.Module, c: int, h: int, w: int | None = None) -> torch.Tensor:
    x = torch.rand(2, c, h, w if w is not None else h)
    out = net(x)
    assert out.shape == (2, net.num_classes)
    assert torch.isfinite(out).all()
    return out


def test_build_returns_genome_net() -> None:
    g = zoo.genome("hand_a")
    net = build(g, 3, 10, 32)
    assert isinstance(net, GenomeNet) and net.genome is g
    run(net, 3, 32)
    net.eval()
    run(net, 3, 32)


@pytest.mark.parametrize("size", [8, 16, 28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_zoo_all_sizes(size: int, channels: int) -> None:
    for name in zoo.names():
        run(build(zoo.genome(name), channels, 10, size), channels, size)


def test_many_downsamplings_on_8x8_never_below_1x1() -> None:
    blocks = [conv(-1)]
    for i in range(12):
        blocks.append(pool(len(blocks) - 1, "max" if i % 2 else "avg"))
        blocks.append(conv(len(blocks) - 1, 8, 5, "sconv"))
    blocks.append(Block("sum", (len(blocks) - 1, 0)))  # 1x1 with 8x8: pooled down
    blocks.append(Block("concat", (len(blocks) - 1, -1)))
    g = Genome(tuple(blocks))
    shapes = infer_shapes(g, 1, 8)
    assert min(min(h, w) for _, h, w in shapes) == 1
    assert shapes[-1] == (9, 1, 1)
    net = build(g, 1, 10, 8)
    run(net, 1, 8)


def test_inferred_shapes_match_forward() -> None:
    g = Genome(
        (
            conv(-1, 16),
            pool(0),
            conv(1, 32, 3, "sconv"),
            Block("sum", (2, 0)),
            Block("concat", (3, -1)),
            pool(4, "avg"),
        )
    )
    shapes = infer_shapes(g, 3, (17, 9))
    assert shapes == [(16, 17, 9), (16, 8, 4), (32, 4, 2), (32, 4, 2), (35, 4, 2), (35, 2, 1)]
    net = build(g, 3, 5, (17, 9))
    seen: dict[int, tuple[int, ...]] = {}
    for i, layer in enumerate(net.body):
        layer.register_forward_hook(lambda _m, _i, out, i=i: seen.__setitem__(i, tuple(out.shape[1:])))
    run(net, 3, 17, 9)
    assert [seen[i] for i in range(len(shapes))] == shapes


def test_sum_zero_pads_smaller_channels() -> None:
    # Block 0: 1x1 conv from 1 to 3 channels; block 1: sum with the 1-channel image.
    g = Genome((conv(-1, 3, 1), Block("sum", (0, -1))), head=())
    net = build(g, 1, 2, 4).eval()
    block = net.body[0]
    assert isinstance(block, torch.nn.Sequential)
    conv_layer, bn = block[0], block[1]
    assert isinstance(conv_layer, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)
    with torch.no_grad():
        conv_layer.weight.copy_(torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1))
        bn.eps = 0.0
    captured: list[torch.Tensor] = []
    net.body[1].register_forward_hook(lambda _m, _i, out: captured.append(out))
    x = torch.rand(1, 1, 4, 4)
    net(x)
    out = captured[0]
    assert out.shape == (1, 3, 4, 4)
    torch.testing.assert_close(out[:, 0], 1 * x[:, 0] + x[:, 0])  # padded image adds to channel 0 only
    torch.testing.assert_close(out[:, 1], 2 * x[:, 0])
    torch.testing.assert_close(out[:, 2], 3 * x[:, 0])


def test_sum_and_concat_reconcile_spatial_sizes() -> None:
    g = Genome((pool(-1, "avg"), Block("sum", (0, -1)), Block("concat", (1, -1))), head=())
    net = build(g, 2, 2, 6)
    captured: dict[int, torch.Tensor] = {}
    for i in (1, 2):
        net.body[i].register_forward_hook(lambda _m, _i, out, i=i: captured.__setitem__(i, out))
    x = torch.rand(1, 2, 6, 6)
    net(x)
    small = F.avg_pool2d(x, 2)
    torch.testing.assert_close(captured[1], small + F.adaptive_avg_pool2d(x, (3, 3)))
    torch.testing.assert_close(captured[2], torch.cat((captured[1], F.adaptive_avg_pool2d(x, (3, 3))), 1))


def test_dead_ends_are_not_built() -> None:
    g = Genome((conv(-1, 64, 5), conv(-1, 8, 3)), head=())
    net = build(g, 3, 10, 8)
    assert net.live == (1,)
    assert isinstance(net.body[0], torch.nn.Identity)
    assert count_params(net) == estimate_params(g, 3, 10, 8) == (3 * 8 * 9 + 16) + (8 * 16 * 10 + 10)


def test_estimates_on_a_known_net() -> None:
    g = Genome((conv(-1, 4, 3), conv(0, 6, 1, "sconv")), head=(Block("fc", units=5),))
    # conv 3->4 3x3 at 8x8, sconv 4->6 1x1 at 4x4, head grid 4x4: 96 -> 5 -> 2.
    assert estimate_flops(g, 3, 2, 8) == 3 * 4 * 9 * 64 + 4 * 6 * 16 + 96 * 5 + 5 * 2
    assert estimate_params(g, 3, 2, 8) == (3 * 4 * 9 + 8) + (4 * 6 + 12) + (96 * 5 + 5) + (5 * 2 + 2)
    assert count_params(build(g, 3, 2, 8)) == estimate_params(g, 3, 2, 8)


def test_head_pools_to_small_grid() -> None:
    net = build(zoo.genome("hand_a"), 3, 10, 64)
    first_linear = next(m for m in net.head if isinstance(m, torch.nn.Linear))
    assert first_linear.in_features == 96 * 4 * 4
    assert first_linear.out_features == 128
    linears = [m for m in net.head if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 and linears[-1].out_features == 10  # hidden fc + classifier


def test_normalisation_inside_model() -> None:
    g = Genome((pool(-1, "avg"),), head=())
    plain = build(g, 1, 2, 4)
    normed = build(g, 1, 2, 4, mean=[0.5], std=[0.25])
    normed.head.load_state_dict(plain.head.state_dict())  # mean/std buffers stay
    x = torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(normed(x), plain((x - 0.5) / 0.25))
    with pytest.raises(ValueError, match="one per channel"):
        build(g, 3, 2, 4, mean=[0.5], std=[0.25])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": (8, 8, 8)}, "image_size"),
        ({"image_size": "32"}, "image_size"),
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_build_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"in_channels": 3, "num_classes": 10, "image_size": 16, **kwargs}
    with pytest.raises(ValueError, match=match):
        build(zoo.genome("hand_b"), **args)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Genome"):
        build("hand_a", 3, 10, 16)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["hand_a", "hand_b", "random"])
def test_double_backward(name: str) -> None:
    torch.manual_seed(0)
    if name == "random":
        rng = random.Random(3)
        g = mutations.aggressive_mutation(prior.random_genome(rng), rng, k=8, budget=BUDGET)
    else:
        g = zoo.genome(name)
    net = build(g, 3, 10, 16)
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    y = torch.randint(0, 10, (4,))
    loss = F.cross_entropy(net(x), y)
    (grad_x,) = torch.autograd.grad(loss, x, create_graph=True)
    assert grad_x.requires_grad
    gm = -F.cosine_similarity(grad_x.flatten(1), torch.rand(4, 3 * 16 * 16), dim=1).mean()
    gm.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)


def test_torch_func_functional_call() -> None:
    net = build(zoo.genome("hand_b"), 1, 10, 16).eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())
    x = torch.rand(2, 1, 16, 16)

    def loss(x_: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(net, {**params, **buffers}, (x_,)).sum()

    g = torch.func.grad(loss)(x)
    assert g.shape == x.shape and torch.isfinite(g).all()


@settings(max_examples=30, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32 - 1), size=st.sampled_from([8, 12, 16, 64]), channels=st.sampled_from([1, 3])
)
def test_random_genomes_build_any_size(seed: int, size: int, channels: int) -> None:
    rng = random.Random(seed)
    g = mutations.aggressive_mutation(prior.random_genome(rng), rng, k=(0, 12), budget=BUDGET)
    net = build(g, channels, 7, size)
    run(net, channels, size)
    assert count_params(net) == estimate_params(g, channels, 7, size)
    assert estimate_flops(g, channels, 7, size) > 0
