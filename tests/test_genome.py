"""Genome data model: validation, JSON round trips, spectra and distances."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gmsearch.nets import zoo
from gmsearch.nets.genome import (
    BLOCK_KINDS,
    DEFAULT_HEAD,
    SCHEMA_VERSION,
    Block,
    Genome,
    GenomeError,
    spectrum_distance,
)
from gmsearch.search import mutations, prior


def conv(src: int, ch: int = 8, k: int = 3) -> Block:
    return Block("conv", (src,), out_channels=ch, kernel_size=k)


def small() -> Genome:
    return Genome(
        (
            conv(-1, 16),
            Block("pool", (0,), pool_type="max"),
            Block("sconv", (1,), out_channels=32, kernel_size=5),
            Block("sum", (2, 0)),
            Block("concat", (3, -1)),
        )
    )


def test_constants() -> None:
    assert BLOCK_KINDS == ("conv", "pool", "sconv", "sum", "concat", "fc")
    assert isinstance(SCHEMA_VERSION, int)


def test_spectrum_and_num_blocks() -> None:
    g = small()
    assert g.spectrum() == (1, 1, 1, 1, 1)
    assert g.num_blocks == 5
    assert g.head == DEFAULT_HEAD
    assert g.output_index == 4


def test_json_format_and_round_trip() -> None:
    g = small()
    d = json.loads(g.to_json())
    assert d["schema_version"] == SCHEMA_VERSION
    assert d["blocks"][0] == {"kind": "conv", "inputs": [-1], "out_channels": 16, "kernel_size": 3}
    assert d["blocks"][1] == {"kind": "pool", "inputs": [0], "pool_type": "max"}
    assert d["blocks"][3] == {"kind": "sum", "inputs": [2, 0]}
    assert d["head"] == [{"kind": "fc", "units": 128}]
    assert Genome.from_json(g.to_json()) == g
    assert Genome.from_dict(g.to_dict()) == g
    assert g.to_json() == Genome.from_json(g.to_json()).to_json()  # deterministic text


def test_equality_and_hash_by_content() -> None:
    a, b = small(), Genome.from_json(small().to_json())
    assert a == b and hash(a) == hash(b) and a is not b
    assert len({a, b}) == 1
    c = Genome(a.blocks, head=())
    assert c != a
    with pytest.raises(AttributeError):
        a.blocks = ()  # type: ignore[misc]


def test_lists_are_normalised_to_tuples() -> None:
    g = Genome([Block("conv", [-1], out_channels=8, kernel_size=1)], head=[])  # type: ignore[arg-type]
    assert isinstance(g.blocks, tuple) and g.blocks[0].inputs == (-1,) and g.head == ()
    assert hash(g) == hash(Genome((conv(-1, 8, 1),), head=()))


def test_summary() -> None:
    s = small().summary()
    assert s == "conv3x3/16 > pool/max > sconv5x5/32 > sum(2,0) > concat(3,-1) | fc128"
    g = Genome((conv(-1), conv(-1)), head=())
    assert g.summary() == "conv3x3/8 > conv3x3/8@-1 | linear"
    assert str(g) == g.summary()


def test_live_blocks_and_consumers() -> None:
    g = Genome((conv(-1), conv(-1), Block("sum", (1, -1))))
    assert g.live_blocks() == [1, 2]  # block 0 is a dead end
    assert g.consumers(-1) == [0, 1, 2]
    assert g.consumers(1) == [2]


@pytest.mark.parametrize(
    ("blocks", "match"),
    [
        ([{"kind": "dense", "inputs": [-1]}], r"unknown kind 'dense'.*allowed kinds"),
        ([{"kind": "conv", "inputs": [3], "out_channels": 8, "kernel_size": 3}], r"dangling input 3"),
        ([{"kind": "conv", "inputs": [-2], "out_channels": 8, "kernel_size": 3}], r"dangling input -2"),
        (
            [
                {"kind": "conv", "inputs": [1], "out_channels": 8, "kernel_size": 3},
                {"kind": "conv", "inputs": [0], "out_channels": 8, "kernel_size": 3},
            ],
            r"forward reference or cycle",
        ),
        ([{"kind": "conv", "inputs": [0], "out_channels": 8, "kernel_size": 3}], r"forward reference or"),
        ([{"kind": "sum", "inputs": [-1]}], r"exactly 2"),
        ([{"kind": "conv", "inputs": [-1, -1], "out_channels": 8, "kernel_size": 3}], r"exactly 1"),
        ([{"kind": "conv", "inputs": [-1], "out_channels": 8, "kernel_size": 4}], r"kernel_size=4.*odd"),
        ([{"kind": "conv", "inputs": [-1], "out_channels": 0, "kernel_size": 3}], r"out_channels=0"),
        ([{"kind": "conv", "inputs": [-1], "out_channels": 8.0, "kernel_size": 3}], r"out_channels=8.0"),
        ([{"kind": "conv", "inputs": [-1], "kernel_size": 3}], r"missing parameter 'out_channels'"),
        ([{"kind": "pool", "inputs": [-1], "pool_type": "min"}], r"pool_type='min'.*\['max', 'avg'\]"),
        ([{"kind": "pool", "inputs": [-1], "pool_type": "max", "units": 3}], r"must not set units"),
        ([{"kind": "conv", "inputs": [True], "out_channels": 8, "kernel_size": 3}], r"not an int"),
        ([{"kind": "fc", "units": 10}], r"fc blocks belong in the head"),
        ([{"kind": "conv", "inputs": [-1], "out_channels": 8, "kernel_size": 3, "stride": 2}], r"stride"),
        ([{"inputs": [-1]}], r"no 'kind'"),
        ([], r"at least one body block"),
    ],
)
def test_validation_errors(blocks: list[dict[str, object]], match: str) -> None:
    d = {"schema_version": SCHEMA_VERSION, "blocks": blocks, "head": []}
    with pytest.raises(GenomeError, match=match):
        Genome.from_json(json.dumps(d))


def test_head_validation() -> None:
    body = [{"kind": "conv", "inputs": [-1], "out_channels": 8, "kernel_size": 3}]
    for head, match in [
        ([{"kind": "conv", "inputs": [-1], "out_channels": 8, "kernel_size": 3}], "only 'fc'"),
        ([{"kind": "fc", "units": 0}], "units=0"),
        ([{"kind": "fc", "inputs": [0], "units": 8}], "exactly 0"),
    ]:
        with pytest.raises(GenomeError, match=match):
            Genome.from_dict({"schema_version": SCHEMA_VERSION, "blocks": body, "head": head})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "malformed genome JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"blocks": []}', "no 'schema_version'"),
        ('{"schema_version": 99, "blocks": []}', "unsupported genome schema_version 99"),
        ('{"schema_version": 1, "blocks": [], "extra": 1}', r"unknown genome field\(s\) \['extra'\]"),
        ('{"schema_version": 1}', "no 'blocks'"),
        ('{"schema_version": 1, "blocks": 3}', "must be a list"),
        ('{"schema_version": 1, "blocks": [3]}', "must be a JSON object"),
        ('{"schema_version": 1, "blocks": [{"kind": "conv", "inputs": 3}]}', "list of ints"),
    ],
)
def test_malformed_json(text: str, match: str) -> None:
    with pytest.raises(GenomeError, match=match):
        Genome.from_json(text)


def test_genome_error_is_value_error() -> None:
    assert issubclass(GenomeError, ValueError)
    with pytest.raises(ValueError):
        Genome(())


def test_missing_head_defaults() -> None:
    d = small().to_dict()
    del d["head"]
    assert Genome.from_dict(d).head == DEFAULT_HEAD


def test_spectrum_distance() -> None:
    assert spectrum_distance((4, 0, 0, 0, 0), (0, 0, 0, 0, 3)) == 5.0
    assert spectrum_distance(small(), small()) == 0.0
    assert spectrum_distance(small(), (1, 1, 1, 1, 1)) == 0.0
    assert spectrum_distance((1, 0, 0, 0, 0), (0, 0, 0, 0, 0), scale=(2, 1, 1, 1, 1)) == 2.0
    assert spectrum_distance((1, 1, 0, 0, 0), (0, 0, 0, 0, 0), scale=(0, 1, 1, 1, 1)) == 1.0
    a, b = zoo.genome("hand_a"), zoo.genome("hand_b")
    assert math.isclose(spectrum_distance(a, b), math.sqrt(1 + 1 + 1))
    assert spectrum_distance(a, b) == spectrum_distance(b, a)
    with pytest.raises(ValueError, match="5 numbers"):
        spectrum_distance((1, 2), (0, 0, 0, 0, 0))
    with pytest.raises(ValueError, match="non-negative"):
        spectrum_distance(a, b, scale=(-1, 1, 1, 1, 1))


@settings(max_examples=40, deadline=None, database=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_genomes_round_trip_and_count(seed: int) -> None:
    rng = random.Random(seed)
    g = mutations.aggressive_mutation(prior.random_genome(rng), rng, k=(0, 10))
    assert Genome.from_json(g.to_json()) == g
    assert Genome.from_json(g.to_json(indent=2)) == g
    kinds = [b.kind for b in g.blocks]
    assert g.spectrum() == tuple(kinds.count(k) for k in ("conv", "pool", "sconv", "sum", "concat"))
    assert sum(g.spectrum()) == g.num_blocks
    g.validate()
