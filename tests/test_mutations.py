"""Mutation operators, budgets, random genomes, initial populations and the DEAP toolbox."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch
from deap import base
from hypothesis import given, settings
from hypothesis import strategies as st

from gmsearch.nets import zoo
from gmsearch.nets.builder import build, estimate_params
from gmsearch.nets.genome import Block, Genome, spectrum_distance
from gmsearch.search import mutations, prior

BUILTIN = [
    "add_conv", "edit_conv", "delete_conv",
    "add_pool", "edit_pool", "delete_pool",
    "add_sconv", "edit_sconv", "delete_sconv",
    "add_sum", "delete_sum",
    "add_concat", "delete_concat",
]
BUDGET = mutations.SizeBudget(max_blocks=16, max_params=300_000, in_channels=3, num_classes=10, image_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def conv(src: int, ch: int = 8, k: int = 3) -> Block:
    return Block("conv", (src,), out_channels=ch, kernel_size=k)


def start(kind: str, rng: random.Random) -> Genome:
    return prior.random_genome(rng, budget=BUDGET) if kind == "random" else zoo.genome(kind)


@pytest.fixture
def temporary_op() -> Iterator[str]:
    name = "test_double_channels"

    def double_channels(genome: Genome, rng: random.Random) -> Genome:
        """Double the channels of the first conv block."""
        blocks = list(genome.blocks)
        for i, b in enumerate(blocks):
            if b.kind == "conv" and b.out_channels is not None:
                blocks[i] = replace(b, out_channels=2 * b.out_channels)
                break
        return Genome(tuple(blocks), head=genome.head)

    mutations.register(name)(double_channels)
    yield name
    mutations.registry.unregister(name)


def test_builtin_operators_registered() -> None:
    assert set(BUILTIN) <= set(mutations.names())
    for name in BUILTIN:
        assert callable(mutations.get(name))
        assert mutations.registry.entries()  # descriptions come from docstrings
    descriptions = {e.name: e.description for e in mutations.entries()}
    assert descriptions["add_conv"].startswith("Insert a conv block")


@pytest.mark.parametrize(
    ("op", "delta"),
    [
        ("add_conv", (1, 0, 0, 0, 0)), ("delete_conv", (-1, 0, 0, 0, 0)),
        ("add_pool", (0, 1, 0, 0, 0)), ("delete_pool", (0, -1, 0, 0, 0)),
        ("add_sconv", (0, 0, 1, 0, 0)), ("delete_sconv", (0, 0, -1, 0, 0)),
        ("add_sum", (0, 0, 0, 1, 0)), ("delete_sum", (0, 0, 0, -1, 0)),
        ("add_concat", (0, 0, 0, 0, 1)), ("delete_concat", (0, 0, 0, 0, -1)),
    ],
)
def test_add_delete_change_spectrum_by_one(op: str, delta: tuple[int, ...]) -> None:
    rng = random.Random(0)
    parent = Genome(
        (
            conv(-1),
            Block("pool", (0,), pool_type="max"),
            Block("sconv", (1,), out_channels=16, kernel_size=3),
            Block("sum", (2, 0)),
            Block("concat", (3, 1)),
        )
    )
    for _ in range(10):
        child = mutations.get(op)(parent, rng)
        assert tuple(c - p for c, p in zip(child.spectrum(), parent.spectrum(), strict=True)) == delta
    assert torch.isfinite(build(child, 1, 10, 8)(torch.rand(2, 1, 8, 8))).all()


def test_edit_operators_keep_block_count_and_change_something() -> None:
    rng = random.Random(1)
    g = Genome(
        (conv(-1), Block("pool", (0,), pool_type="max"), Block("sconv", (1,), out_channels=8, kernel_size=3))
    )
    for op in ("edit_conv", "edit_pool", "edit_sconv"):
        for _ in range(20):
            child = mutations.get(op)(g, rng)
            assert child != g and child.num_blocks == g.num_blocks
            assert sum(child.spectrum()[:3]) == 3
    assert mutations.edit_pool(g, rng).blocks[1].pool_type == "avg"
    kinds = {mutations.edit_conv(g, rng).blocks[0].kind for _ in range(30)}
    assert kinds == {"conv", "sconv"}  # stride edits turn conv into sconv


def test_insertion_rewires_consumers() -> None:
    g = Genome((conv(-1, 8), conv(0, 16), Block("sum", (1, 0))))
    # Inserting after block 0: every consumer of 0 now reads the new block (index 1).
    child = mutations._insert_after(g, 0, Block("pool", (0,), pool_type="avg"))
    assert [b.inputs for b in child.blocks] == [(-1,), (0,), (1,), (2, 1)]
    # Inserting after the last block makes the new block the output.
    child = mutations._insert_after(g, 2, Block("concat", (2, -1)))
    assert child.blocks[-1] == Block("concat", (2, -1))


def test_deletion_rewires_to_first_input() -> None:
    g = Genome((conv(-1, 8), conv(0, 16), Block("sum", (1, 0)), conv(2, 32)))
    child = mutations._delete(g, 1)
    assert [b.inputs for b in child.blocks] == [(-1,), (0, 0), (1,)]
    child = mutations._delete(g, 2)  # delete the sum: conv 3 reads the main path (block 1)
    assert [b.inputs for b in child.blocks] == [(-1,), (0,), (1,)]
    child = mutations._delete(g, 0)
    assert [b.inputs for b in child.blocks] == [(-1,), (0, -1), (1,)]


def test_operators_that_do_not_apply_return_input() -> None:
    rng = random.Random(0)
    g = zoo.genome("hand_a")  # no pool, no sconv
    for op in ("delete_pool", "edit_pool", "delete_sconv", "edit_sconv"):
        assert mutations.get(op)(g, rng) is g
    single = Genome((conv(-1),))
    assert mutations.delete_conv(single, rng) is single  # the body keeps one block
    assert mutations.mutate(g, rng, names=["delete_pool"]) is g


def test_mutate_restricted_and_weighted() -> None:
    rng = random.Random(0)
    g = zoo.genome("hand_b")
    for _ in range(10):
        assert mutations.mutate(g, rng, names=["add_pool"]).spectrum()[1] == 2
    weights = dict.fromkeys(mutations.names(), 0.0) | {"add_sum": 1.0}
    assert mutations.mutate(g, rng, weights=weights).spectrum()[3] == 2
    with pytest.raises(ValueError, match=r"unknown mutation operator\(s\) \['nope'\]; available: add_concat"):
        mutations.mutate(g, rng, names=["nope"])
    with pytest.raises(ValueError, match="unknown mutation operator"):
        mutations.mutate(g, rng, weights={"nope": 1.0})
    with pytest.raises(ValueError, match="positive total"):
        mutations.mutate(g, rng, weights=dict.fromkeys(mutations.names(), 0.0))
    with pytest.raises(ValueError, match="at least one"):
        mutations.mutate(g, rng, names=[])


def test_custom_operator_is_picked(temporary_op: str) -> None:
    assert temporary_op in mutations.names()
    rng = random.Random(0)
    child = mutations.mutate(zoo.genome("hand_a"), rng, names=[temporary_op])
    assert child.blocks[0].out_channels == 64
    tb = mutations.toolbox(names=[temporary_op], k=2)
    assert getattr(tb, temporary_op)(zoo.genome("hand_a"), rng).blocks[0].out_channels == 64
    assert tb.aggressive(zoo.genome("hand_a"), rng).blocks[0].out_channels == 128


def test_operator_returning_garbage_is_an_error() -> None:
    def bad(genome: Genome, rng: random.Random) -> Any:
        return "oops"

    mutations.register("test_bad")(bad)
    try:
        with pytest.raises(TypeError, match="test_bad"):
            mutations.mutate(zoo.genome("hand_a"), random.Random(0), names=["test_bad"])
    finally:
        mutations.registry.unregister("test_bad")


def test_aggressive_mutation_count() -> None:
    g = zoo.genome("hand_a")
    counts = set()
    for seed in range(20):
        child = mutations.aggressive_mutation(g, random.Random(seed), names=["add_conv"])
        counts.add(child.spectrum()[0] - g.spectrum()[0])
    assert counts == {4, 5}  # paper: four or five mutations per child
    child = mutations.aggressive_mutation(g, random.Random(0), k=3, names=["add_pool"])
    assert child.spectrum()[1] == 3
    for bad in (-1, (3, 2), (1, 2, 3), "4"):
        with pytest.raises(ValueError, match="k"):
            mutations.aggressive_mutation(g, random.Random(0), k=bad)  # type: ignore[arg-type]


def test_budget() -> None:
    with pytest.raises(ValueError, match="needs in_channels"):
        mutations.SizeBudget(max_params=1000)
    with pytest.raises(ValueError, match="max_blocks"):
        mutations.SizeBudget(max_blocks=0)
    tight = mutations.SizeBudget(max_blocks=7)
    g = zoo.genome("hand_b")  # 7 blocks
    assert tight.allows(g)
    rng = random.Random(0)
    for _ in range(50):
        g = mutations.mutate(g, rng, budget=tight)
        assert g.num_blocks <= 7
    full = zoo.genome("hand_b")
    assert mutations.mutate(full, rng, names=["add_conv"], budget=tight) == full  # nothing fits
    params = mutations.SizeBudget(max_params=100_000, in_channels=3, num_classes=10, image_size=32)
    assert "parameters" in (params.violation(zoo.genome("hand_a")) or "")
    g = prior.random_genome(rng, budget=params)
    for _ in range(30):
        g = mutations.aggressive_mutation(g, rng, budget=params)
        assert estimate_params(g, 3, 10, 32) <= 100_000


@settings(max_examples=30, deadline=None, database=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["random", "hand_a", "hand_b"]))
def test_long_mutation_chains_stay_valid(seed: int, kind: str) -> None:
    rng = random.Random(seed)
    g = start(kind, rng)
    for _ in range(30):
        g = mutations.mutate(g, rng, budget=BUDGET)
        g.validate()
        assert BUDGET.allows(g)
    assert Genome.from_json(g.to_json()) == g
    kinds = [b.kind for b in g.blocks]
    assert g.spectrum() == tuple(kinds.count(k) for k in ("conv", "pool", "sconv", "sum", "concat"))
    for channels, size in ((1, 16), (3, 32)):
        out = build(g, channels, 10, size)(torch.rand(2, channels, size, size))
        assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_mutation_explores_many_spectra() -> None:
    rng = random.Random(0)
    g = zoo.genome("hand_a")
    spectra = set()
    for _ in range(30):
        g = mutations.aggressive_mutation(g, rng, budget=BUDGET)
        spectra.add(g.spectrum())
    assert len(spectra) >= 10
    assert all(any(s[i] > 0 for s in spectra) for i in range(5))  # every block kind appears


def test_determinism() -> None:
    def chain(seed: int) -> list[Genome]:
        rng = random.Random(seed)
        out = prior.initial_population(4, 4.0, rng)
        g = out[0]
        for _ in range(10):
            g = mutations.aggressive_mutation(g, rng, budget=BUDGET)
            out.append(g)
        out.append(prior.random_genome_far_from(out[:4], 4.0, rng))
        return out

    assert chain(7) == chain(7)
    assert chain(7) != chain(8)


def test_random_genome_bounds() -> None:
    rng = random.Random(0)
    sizes = set()
    for _ in range(200):
        g = prior.random_genome(rng, min_blocks=3, max_blocks=6)
        sizes.add(g.num_blocks)
        assert g.blocks[0].kind in ("conv", "pool", "sconv")
    assert sizes == {3, 4, 5, 6}
    capped = prior.random_genome(rng, max_blocks=30, budget=mutations.SizeBudget(max_blocks=4))
    assert capped.num_blocks <= 4
    with pytest.raises(ValueError, match="min_blocks"):
        prior.random_genome(rng, min_blocks=5, max_blocks=3)


@pytest.mark.parametrize(("size", "d"), [(4, 4.0), (5, 4.0), (3, 6.0)])
def test_initial_population_distances(size: int, d: float) -> None:
    pop = prior.initial_population(size, d, random.Random(size))
    assert len(pop) == size
    for i in range(size):
        for j in range(i):
            assert spectrum_distance(pop[i], pop[j]) >= d


def test_initial_population_respects_existing() -> None:
    existing = [zoo.genome("hand_a"), zoo.genome("hand_b")]
    rng = random.Random(0)
    pop = prior.initial_population(3, 4.0, rng, existing=existing)
    assert all(spectrum_distance(p, e) >= 4.0 for p in pop for e in existing)
    g = prior.random_genome_far_from(existing + pop, 4.0, rng)
    assert all(spectrum_distance(g, e) >= 4.0 for e in existing + pop)


def test_initial_population_impossible_distance() -> None:
    with pytest.raises(ValueError, match=r"could not find 4 genome\(s\) with spectrum distance >= 100"):
        prior.initial_population(4, 100.0, random.Random(0))
    with pytest.raises(ValueError, match="could not find"):
        prior.random_genome_far_from([zoo.genome("hand_a")], 100.0, random.Random(0), max_tries=50)
    with pytest.raises(ValueError, match="after 5 tries"):
        prior.initial_population(50, 6.0, random.Random(0), max_tries=5)
    with pytest.raises(ValueError, match="min_distance"):
        prior.initial_population(2, -1.0, random.Random(0))


def test_toolbox() -> None:
    tb = mutations.toolbox(k=(2, 3), budget=BUDGET)
    assert isinstance(tb, base.Toolbox)
    for name in ("mutate", "aggressive", *BUILTIN):
        assert callable(getattr(tb, name))
    rng = random.Random(0)
    g = zoo.genome("hand_a")
    assert tb.add_conv(g, rng).spectrum()[0] == 4
    assert tb.mutate(g, rng) != g
    child = tb.aggressive(g, rng)
    assert BUDGET.allows(child) and child != g
    with pytest.raises(ValueError, match="unknown mutation operator"):
        mutations.toolbox(names=["nope"])
