"""The paper's simple hand-engineered networks (Appendix A) as genomes.

The paper's Fig. 4 gives only block counts in its text, so the layouts below
are small CIFAR-sized designs with exactly those counts. "Two FC blocks" in the
paper's counting is one hidden ``fc`` block (128 units) plus the implicit
classifier the builder adds.

- ``hand_a`` (the reduced-dataset reference network): 3 conv blocks, 3 skip
  blocks (2 sum, 1 concat), 2 FC blocks; no pooling, the head's adaptive
  pooling reduces the map::

      conv3x3/32 > conv3x3/32 > sum(1,0) > conv3x3/64 > sum(3,2) > concat(4,0) | fc128

- ``hand_b`` (the additional baseline): 4 conv blocks, 1 max-pool block, 2 skip
  blocks (1 sum, 1 concat), 2 FC blocks::

      conv3x3/32 > conv3x3/32 > sum(1,0) > pool/max > conv3x3/64 > conv3x3/64 > concat(5,3) | fc128

Example:
    >>> genome("hand_a").spectrum()
    (3, 0, 0, 2, 1)
"""

from __future__ import annotations

from collections.abc import Callable

from gmsearch.nets.genome import Block, Genome

_HEAD = (Block("fc", units=128),)


def _conv(src: int, channels: int, kernel: int = 3) -> Block:
    return Block("conv", (src,), out_channels=channels, kernel_size=kernel)


def _hand_a() -> Genome:
    return Genome(
        (
            _conv(-1, 32),  # 0
            _conv(0, 32),  # 1
            Block("sum", (1, 0)),  # 2: residual around conv 1
            _conv(2, 64),  # 3
            Block("sum", (3, 2)),  # 4: residual, 32 channels zero-padded to 64
            Block("concat", (4, 0)),  # 5: 64 + 32 = 96 channels
        ),
        head=_HEAD,
    )


def _hand_b() -> Genome:
    return Genome(
        (
            _conv(-1, 32),  # 0
            _conv(0, 32),  # 1
            Block("sum", (1, 0)),  # 2: residual around conv 1
            Block("pool", (2,), pool_type="max"),  # 3: halve the map
            _conv(3, 64),  # 4
            _conv(4, 64),  # 5
            Block("concat", (5, 3)),  # 6: 64 + 32 = 96 channels
        ),
        head=_HEAD,
    )


_ZOO: dict[str, Callable[[], Genome]] = {"hand_a": _hand_a, "hand_b": _hand_b}


def names() -> list[str]:
    """Names of the hand-engineered genomes, sorted."""
    return sorted(_ZOO)


def genome(name: str) -> Genome:
    """The hand-engineered genome called ``name``.

    Raises:
        ValueError: Unknown name (the message lists the available ones).
    """
    try:
        return _ZOO[name]()
    except (KeyError, TypeError):
        raise ValueError(f"unknown zoo genome {name!r}; available: {', '.join(names())}") from None
