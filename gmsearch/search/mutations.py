"""Mutation operators on genomes and their registry (random genomes: :mod:`gmsearch.search.prior`).

A mutation operator is a plain function ``(genome, rng) -> genome`` that draws
all its randomness from the ``random.Random`` it is given and always returns a
valid :class:`~gmsearch.genome.Genome`. An operator that does not apply (e.g.
``delete_pool`` on a genome without pools, or deleting the only body block)
returns its input unchanged; :func:`mutate` then draws another operator.

Built-in operators (paper 3.2: add, edit or delete a convolutional, pooling or
strided convolutional block; add or delete summation and concatenation skip
blocks):

- ``add_conv`` / ``add_pool`` / ``add_sconv``: pick a node ``s`` (a body block
  or the input image ``-1``), insert the new block right after it taking ``s``
  as input, and rewire every consumer of ``s`` (and the body output, when
  ``s`` is the last block) to the new block.
- ``add_sum`` / ``add_concat``: pick a block ``b`` and an earlier node ``a``;
  insert ``sum(b, a)`` right after ``b`` and rewire the consumers of ``b`` to
  it (a skip connection from ``a`` into the path after ``b``).
- ``edit_conv`` / ``edit_sconv``: change the kernel size (1, 3, 5), the channel
  count (8 to 128) or the stride (``conv`` <-> ``sconv``).
- ``edit_pool``: switch between max and average pooling.
- ``delete_*``: remove a random block of that kind; its consumers are rewired
  to its first input (the main path: skip blocks made by ``add_sum`` keep the
  main path first), indices are renumbered. The body keeps at least one block.

New operators register with a decorator and are picked by :func:`mutate`::

    @mutations.register("my_mutation")
    def my_mutation(genome: Genome, rng: random.Random) -> Genome: ...
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from deap import base

from gmsearch.nets.builder import estimate_params
from gmsearch.nets.genome import POOL_TYPES, Block, Genome
from gmsearch.registry import Registry

MutationOp = Callable[[Genome, random.Random], Genome]

#: The mutation registry; module-level verbs below mirror it.
registry: Registry[MutationOp] = Registry("mutation")
register = registry.register
get = registry.get
names = registry.names
create = registry.create
entries = registry.entries

#: Kernel sizes used by add/edit of conv and sconv blocks.
KERNEL_SIZES: tuple[int, ...] = (1, 3, 5)
#: Channel counts used by add/edit of conv and sconv blocks.
CHANNELS: tuple[int, ...] = (8, 16, 32, 64, 128)
#: How many operator draws :func:`mutate` makes before giving up.
MAX_DRAWS = 64


# ---------------------------------------------------------------- size budget
@dataclass(frozen=True)
class SizeBudget:
    """Upper bounds on genome size that mutation and random generation respect.

    Args:
        max_blocks: Most body blocks allowed.
        max_params: Most parameters of the built network, or ``None`` for no
            limit. Needs ``in_channels``, ``num_classes`` and ``image_size``.
        in_channels: Input channels used to count parameters.
        num_classes: Classes used to count parameters.
        image_size: Input size (``H`` or ``(H, W)``) used to count parameters.

    Example:
        >>> SizeBudget(max_blocks=10).allows(random_genome(random.Random(0), max_blocks=8))
        True
    """

    max_blocks: int = 20
    max_params: int | None = None
    in_channels: int | None = None
    num_classes: int | None = None
    image_size: int | tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_blocks, int) or self.max_blocks < 1:
            raise ValueError(f"max_blocks must be a positive int, got {self.max_blocks!r}")
        if self.max_params is not None:
            if not isinstance(self.max_params, int) or self.max_params < 1:
                raise ValueError(f"max_params must be a positive int or None, got {self.max_params!r}")
            missing = [n for n in ("in_channels", "num_classes", "image_size") if getattr(self, n) is None]
            if missing:
                raise ValueError(
                    f"max_params={self.max_params} needs {', '.join(missing)} to count parameters"
                )

    def violation(self, genome: Genome) -> str | None:
        """Why ``genome`` exceeds the budget, or ``None`` if it fits."""
        if genome.num_blocks > self.max_blocks:
            return f"{genome.num_blocks} body blocks > max_blocks={self.max_blocks}"
        if self.max_params is not None:
            assert self.in_channels is not None and self.num_classes is not None
            assert self.image_size is not None
            n = estimate_params(genome, self.in_channels, self.num_classes, self.image_size)
            if n > self.max_params:
                return f"{n} parameters > max_params={self.max_params}"
        return None

    def allows(self, genome: Genome) -> bool:
        """Whether ``genome`` fits the budget."""
        return self.violation(genome) is None


# ------------------------------------------------------------ graph surgery
def _insert_after(genome: Genome, source: int, new: Block) -> Genome:
    """Insert ``new`` at index ``source + 1`` and rewire consumers of ``source`` to it.

    ``new.inputs`` are given in the old numbering and must all be ``<= source``.
    """
    pos = source + 1

    def shift(x: int) -> int:
        return x + 1 if x >= pos else x

    blocks = [*genome.blocks[:pos], new]
    for b in genome.blocks[pos:]:
        inputs = tuple(pos if x == source else shift(x) for x in b.inputs)
        blocks.append(replace(b, inputs=inputs))
    return Genome(tuple(blocks), head=genome.head)


def _delete(genome: Genome, index: int) -> Genome:
    """Remove block ``index``; its consumers take its first input instead."""
    if genome.num_blocks <= 1:
        return genome
    target = genome.blocks[index].inputs[0]

    def remap(x: int) -> int:
        if x == index:
            return target
        return x - 1 if x > index else x

    blocks = list(genome.blocks[:index])
    for b in genome.blocks[index + 1 :]:
        blocks.append(replace(b, inputs=tuple(remap(x) for x in b.inputs)))
    return Genome(tuple(blocks), head=genome.head)


def _indices(genome: Genome, kind: str) -> list[int]:
    return [i for i, b in enumerate(genome.blocks) if b.kind == kind]


def random_unary(kind: str, source: int, rng: random.Random) -> Block:
    if kind == "pool":
        return Block("pool", (source,), pool_type=rng.choice(POOL_TYPES))
    return Block(kind, (source,), out_channels=rng.choice(CHANNELS), kernel_size=rng.choice(KERNEL_SIZES))


def _add_unary(kind: str, genome: Genome, rng: random.Random) -> Genome:
    source = rng.randrange(-1, genome.num_blocks)
    return _insert_after(genome, source, random_unary(kind, source, rng))


def _add_skip(kind: str, genome: Genome, rng: random.Random) -> Genome:
    main = rng.randrange(0, genome.num_blocks)
    skip = rng.randrange(-1, main)
    return _insert_after(genome, main, Block(kind, (main, skip)))


def _delete_kind(kind: str, genome: Genome, rng: random.Random) -> Genome:
    candidates = _indices(genome, kind)
    if not candidates or genome.num_blocks <= 1:
        return genome
    return _delete(genome, rng.choice(candidates))


def _edit_conv_like(kind: str, genome: Genome, rng: random.Random) -> Genome:
    candidates = _indices(genome, kind)
    if not candidates:
        return genome
    i = rng.choice(candidates)
    block = genome.blocks[i]
    what = rng.choice(("kernel_size", "out_channels", "stride"))
    if what == "kernel_size":
        new = replace(block, kernel_size=rng.choice([k for k in KERNEL_SIZES if k != block.kernel_size]))
    elif what == "out_channels":
        new = replace(block, out_channels=rng.choice([c for c in CHANNELS if c != block.out_channels]))
    else:
        new = replace(block, kind="sconv" if kind == "conv" else "conv")
    blocks = list(genome.blocks)
    blocks[i] = new
    return Genome(tuple(blocks), head=genome.head)


# ----------------------------------------------------------------- operators
@register("add_conv")
def add_conv(genome: Genome, rng: random.Random) -> Genome:
    """Insert a conv block (random kernel and channels) after a random node."""
    return _add_unary("conv", genome, rng)


@register("edit_conv")
def edit_conv(genome: Genome, rng: random.Random) -> Genome:
    """Change a conv block's kernel size, channels, or stride (becoming sconv)."""
    return _edit_conv_like("conv", genome, rng)


@register("delete_conv")
def delete_conv(genome: Genome, rng: random.Random) -> Genome:
    """Remove a random conv block, rewiring its consumers to its input."""
    return _delete_kind("conv", genome, rng)


@register("add_pool")
def add_pool(genome: Genome, rng: random.Random) -> Genome:
    """Insert a max or average pooling block after a random node."""
    return _add_unary("pool", genome, rng)


@register("edit_pool")
def edit_pool(genome: Genome, rng: random.Random) -> Genome:
    """Switch a pooling block between max and average pooling."""
    candidates = _indices(genome, "pool")
    if not candidates:
        return genome
    i = rng.choice(candidates)
    blocks = list(genome.blocks)
    blocks[i] = replace(blocks[i], pool_type="avg" if blocks[i].pool_type == "max" else "max")
    return Genome(tuple(blocks), head=genome.head)


@register("delete_pool")
def delete_pool(genome: Genome, rng: random.Random) -> Genome:
    """Remove a random pooling block, rewiring its consumers to its input."""
    return _delete_kind("pool", genome, rng)


@register("add_sconv")
def add_sconv(genome: Genome, rng: random.Random) -> Genome:
    """Insert a strided conv block (random kernel and channels) after a random node."""
    return _add_unary("sconv", genome, rng)


@register("edit_sconv")
def edit_sconv(genome: Genome, rng: random.Random) -> Genome:
    """Change an sconv block's kernel size, channels, or stride (becoming conv)."""
    return _edit_conv_like("sconv", genome, rng)


@register("delete_sconv")
def delete_sconv(genome: Genome, rng: random.Random) -> Genome:
    """Remove a random strided conv block, rewiring its consumers to its input."""
    return _delete_kind("sconv", genome, rng)


@register("add_sum")
def add_sum(genome: Genome, rng: random.Random) -> Genome:
    """Add a summation skip block joining a random block and an earlier node."""
    return _add_skip("sum", genome, rng)


@register("delete_sum")
def delete_sum(genome: Genome, rng: random.Random) -> Genome:
    """Remove a random summation block, rewiring its consumers to its main (first) input."""
    return _delete_kind("sum", genome, rng)


@register("add_concat")
def add_concat(genome: Genome, rng: random.Random) -> Genome:
    """Add a concatenation skip block joining a random block and an earlier node."""
    return _add_skip("concat", genome, rng)


@register("delete_concat")
def delete_concat(genome: Genome, rng: random.Random) -> Genome:
    """Remove a random concatenation block, rewiring its consumers to its main (first) input."""
    return _delete_kind("concat", genome, rng)


# ------------------------------------------------------------------ drivers
def _candidates(
    names_: Sequence[str] | None, weights: Mapping[str, float] | None
) -> tuple[list[str], list[float]]:
    available = registry.names()
    if isinstance(names_, str):
        raise ValueError(f"names must be a sequence of operator names, got the string {names_!r}")
    chosen = list(available if names_ is None else names_)
    unknown = [n for n in chosen if n not in registry]
    unknown += [n for n in (weights or {}) if n not in registry and n not in unknown]
    if unknown:
        raise ValueError(f"unknown mutation operator(s) {unknown}; available: {', '.join(available)}")
    if not chosen:
        raise ValueError(f"names must list at least one mutation operator; available: {', '.join(available)}")
    w = [float((weights or {}).get(n, 1.0)) for n in chosen]
    if any(x < 0 or math.isnan(x) for x in w) or sum(w) <= 0:
        raise ValueError(f"mutation weights must be >= 0 with a positive total, got {dict(weights or {})!r}")
    return chosen, w


def mutate(
    genome: Genome,
    rng: random.Random,
    *,
    names: Sequence[str] | None = None,
    weights: Mapping[str, float] | None = None,
    budget: SizeBudget | None = None,
) -> Genome:
    """Apply one randomly drawn registered operator.

    An operator is drawn (uniformly, or by ``weights``) among ``names`` (default:
    every registered one). A draw that changes nothing (the operator does not
    apply) or breaks ``budget`` is discarded and another operator is drawn, up
    to :data:`MAX_DRAWS` times; then ``genome`` is returned unchanged.

    Args:
        genome: The parent.
        rng: Source of all randomness.
        names: Operators to draw from.
        weights: Relative weight per operator name (default 1.0); 0 excludes one.
        budget: Size limits the result must respect.

    Returns:
        A valid genome, usually different from ``genome``.

    Raises:
        ValueError: Unknown operator names or bad weights.
        TypeError: An operator returned something other than a Genome.
    """
    chosen, w = _candidates(names, weights)
    for _ in range(MAX_DRAWS):
        name = rng.choices(chosen, weights=w)[0]
        child = registry.get(name)(genome, rng)
        if not isinstance(child, Genome):
            raise TypeError(f"mutation operator {name!r} returned {type(child).__name__}, not a Genome")
        if child == genome or (budget is not None and not budget.allows(child)):
            continue
        return child
    return genome


def _k_range(k: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(k, int) and not isinstance(k, bool):
        lo, hi = k, k
    elif isinstance(k, tuple) and len(k) == 2 and all(isinstance(v, int) for v in k):
        lo, hi = k
    else:
        raise ValueError(f"k must be an int or an inclusive (low, high) pair of ints, got {k!r}")
    if lo < 0 or hi < lo:
        raise ValueError(f"k range must satisfy 0 <= low <= high, got {k!r}")
    return lo, hi


def aggressive_mutation(
    genome: Genome,
    rng: random.Random,
    *,
    k: int | tuple[int, int] = (4, 5),
    names: Sequence[str] | None = None,
    weights: Mapping[str, float] | None = None,
    budget: SizeBudget | None = None,
) -> Genome:
    """Apply several mutations in a row (paper 3.2: four or five per child).

    Args:
        genome: The parent.
        rng: Source of all randomness.
        k: Number of mutations, or an inclusive ``(low, high)`` range drawn uniformly.
        names: Operators to draw from (see :func:`mutate`).
        weights: Operator weights (see :func:`mutate`).
        budget: Size limits every intermediate genome respects.
    """
    lo, hi = _k_range(k)
    for _ in range(rng.randint(lo, hi)):
        genome = mutate(genome, rng, names=names, weights=weights, budget=budget)
    return genome


# -------------------------------------------------------------------- DEAP
def toolbox(
    *,
    k: int | tuple[int, int] = (4, 5),
    names: Sequence[str] | None = None,
    weights: Mapping[str, float] | None = None,
    budget: SizeBudget | None = None,
) -> base.Toolbox:
    """A DEAP toolbox binding the mutation operators (no ``deap.creator`` globals).

    Registers ``mutate(genome, rng)`` (one operator, see :func:`mutate`),
    ``aggressive(genome, rng)`` (``k`` operators, see :func:`aggressive_mutation`)
    and, under its own name, every operator registered when this is called
    (names that clash with a ``Toolbox`` method are skipped).

    Example:
        >>> from gmsearch.nets import zoo
        >>> tb = toolbox(k=2)
        >>> g = tb.aggressive(zoo.genome("hand_a"), random.Random(1))
    """
    _candidates(names, weights)  # validate eagerly
    _k_range(k)
    tb = base.Toolbox()
    tb.register("mutate", mutate, names=names, weights=weights, budget=budget)
    tb.register("aggressive", aggressive_mutation, k=k, names=names, weights=weights, budget=budget)
    for name in registry.names():
        if not hasattr(tb, name):
            tb.register(name, registry.get(name))
    return tb
