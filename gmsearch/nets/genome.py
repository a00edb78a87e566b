"""Genomes: JSON-serialisable DAGs of CNN blocks, their spectra and distances.

A :class:`Genome` is an immutable, hashable description of a network: a
topologically ordered *body* of blocks (``conv``, ``pool``, ``sconv``, ``sum``,
``concat``) followed by a *head* of hidden fully-connected (``fc``) blocks. The
final classifier layer (``Linear`` to ``num_classes``) is implicit and added by
:func:`gmsearch.builder.build`, so a head of one ``fc`` block is a two-FC-block
network in the paper's counting (Appendix A). The spectrum
``(n_conv, n_pool, n_sconv, n_sum, n_concat)`` and its Euclidean distance
(paper eq. 3) drive spectrum-based niching.

Inputs of a body block are indices of earlier blocks in ``Genome.blocks``; ``-1``
is the network's input image. The output of the body is its last block. Head
blocks have no inputs: they form a chain after the body output.

JSON format (``schema_version`` 1)::

    {"schema_version": 1,
     "blocks": [{"kind": "conv", "inputs": [-1], "out_channels": 32, "kernel_size": 3},
                {"kind": "pool", "inputs": [0], "pool_type": "max"},
                {"kind": "sum", "inputs": [1, -1]}],
     "head": [{"kind": "fc", "units": 128}]}

Example:
    >>> g = Genome((Block("conv", (-1,), out_channels=16, kernel_size=3),
    ...             Block("sum", (0, -1))))
    >>> g.spectrum()
    (1, 0, 0, 1, 0)
    >>> Genome.from_json(g.to_json()) == g
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

#: Version of the JSON layout written by :meth:`Genome.to_dict`.
SCHEMA_VERSION: int = 1

#: Every block kind, in spectrum order followed by the head kind.
BLOCK_KINDS: tuple[str, ...] = ("conv", "pool", "sconv", "sum", "concat", "fc")

#: Kinds allowed in the body (everything but ``fc``).
BODY_KINDS: tuple[str, ...] = ("conv", "pool", "sconv", "sum", "concat")

#: Kinds counted by :meth:`Genome.spectrum`, in spectrum order.
SPECTRUM_KINDS: tuple[str, ...] = ("conv", "pool", "sconv", "sum", "concat")

#: Pooling types of ``pool`` blocks.
POOL_TYPES: tuple[str, ...] = ("max", "avg")

#: Largest channel count / unit count / kernel size accepted by validation.
MAX_CHANNELS = 4096
MAX_UNITS = 65536
MAX_KERNEL = 15

_ARITY: dict[str, int] = {"conv": 1, "pool": 1, "sconv": 1, "sum": 2, "concat": 2, "fc": 0}
_PARAMS: dict[str, tuple[str, ...]] = {
    "conv": ("out_channels", "kernel_size"),
    "sconv": ("out_channels", "kernel_size"),
    "pool": ("pool_type",),
    "sum": (),
    "concat": (),
    "fc": ("units",),
}
_ALL_PARAMS: tuple[str, ...] = ("out_channels", "kernel_size", "pool_type", "units")
_BLOCK_KEYS: frozenset[str] = frozenset(("kind", "inputs", *_ALL_PARAMS))
_GENOME_KEYS: frozenset[str] = frozenset(("schema_version", "blocks", "head"))

Spectrum = tuple[int, int, int, int, int]


class GenomeError(ValueError):
    """A genome (or its JSON) that is malformed or violates the block rules."""


@dataclass(frozen=True)
class Block:
    """One block of a genome.

    Args:
        kind: One of :data:`BLOCK_KINDS`.
        inputs: Indices of earlier body blocks (``-1`` is the input image).
            ``conv``/``pool``/``sconv`` take one input, ``sum``/``concat`` two,
            ``fc`` none (head blocks chain after the body output).
        out_channels: Output channels of ``conv``/``sconv`` blocks.
        kernel_size: Odd kernel size of ``conv``/``sconv`` blocks ("same"
            padding; ``sconv`` has stride 2).
        pool_type: ``"max"`` or ``"avg"`` for ``pool`` blocks (kernel 2, stride 2).
        units: Width of a hidden ``fc`` block.

    Parameters that do not belong to ``kind`` must stay ``None``. A block is
    checked when the :class:`Genome` holding it is created.
    """

    kind: str
    inputs: tuple[int, ...] = ()
    out_channels: int | None = None
    kernel_size: int | None = None
    pool_type: str | None = None
    units: int | None = None

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store a hashable tuple.
        if not isinstance(self.inputs, tuple):
            try:
                object.__setattr__(self, "inputs", tuple(self.inputs))
            except TypeError:
                raise GenomeError(
                    f"block inputs must be a sequence of ints, got {self.inputs!r}"
                ) from None

    def params(self) -> dict[str, Any]:
        """The kind-specific parameters that are set, by name."""
        return {name: getattr(self, name) for name in _ALL_PARAMS if getattr(self, name) is not None}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``kind``, ``inputs`` (body blocks only) and set parameters."""
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind != "fc" or self.inputs:
            d["inputs"] = list(self.inputs)
        d.update(self.params())
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Block:
        """Parse a block dict written by :meth:`to_dict` (checked by :class:`Genome`)."""
        if not isinstance(d, Mapping):
            raise GenomeError(f"a block must be a JSON object, got {d!r}")
        unknown = sorted(set(d) - _BLOCK_KEYS)
        if unknown:
            raise GenomeError(
                f"unknown block field(s) {unknown} in {dict(d)!r}; allowed: {sorted(_BLOCK_KEYS)}"
            )
        if "kind" not in d:
            raise GenomeError(f"block {dict(d)!r} has no 'kind'; allowed kinds: {list(BLOCK_KINDS)}")
        inputs = d.get("inputs", [])
        if not isinstance(inputs, list | tuple):
            raise GenomeError(f"block inputs must be a list of ints, got {inputs!r}")
        return cls(
            kind=d["kind"],
            inputs=tuple(inputs),
            out_channels=d.get("out_channels"),
            kernel_size=d.get("kernel_size"),
            pool_type=d.get("pool_type"),
            units=d.get("units"),
        )

    def label(self) -> str:
        """Short readable label, e.g. ``conv3x3/32``, ``pool/max``, ``sum``, ``fc128``."""
        if self.kind in ("conv", "sconv"):
            return f"{self.kind}{self.kernel_size}x{self.kernel_size}/{self.out_channels}"
        if self.kind == "pool":
            return f"pool/{self.pool_type}"
        if self.kind == "fc":
            return f"fc{self.units}"
        return self.kind


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_block(index: int, block: Block, n_body: int, *, in_head: bool) -> None:
    where = f"head block {index}" if in_head else f"block {index}"
    if not isinstance(block, Block):
        raise GenomeError(f"{where} must be a Block, got {type(block).__name__}")
    if block.kind not in BLOCK_KINDS:
        raise GenomeError(f"{where} has unknown kind {block.kind!r}; allowed kinds: {list(BLOCK_KINDS)}")
    if in_head and block.kind != "fc":
        raise GenomeError(f"{where} has kind {block.kind!r}; the head holds only 'fc' blocks")
    if not in_head and block.kind == "fc":
        raise GenomeError(
            f"{where} has kind 'fc'; fc blocks belong in the head, body kinds: {list(BODY_KINDS)}"
        )

    # Parameters: exactly the ones of this kind, with valid values.
    wanted = _PARAMS[block.kind]
    for name in _ALL_PARAMS:
        value = getattr(block, name)
        if name not in wanted and value is not None:
            raise GenomeError(
                f"{where} ({block.kind}) must not set {name}={value!r}; "
                f"{block.kind} parameters: {list(wanted) or 'none'}"
            )
        if name in wanted and value is None:
            raise GenomeError(f"{where} ({block.kind}) is missing parameter {name!r}")
    if block.kind in ("conv", "sconv"):
        ch, k = block.out_channels, block.kernel_size
        if not _is_int(ch) or not 1 <= ch <= MAX_CHANNELS:
            raise GenomeError(
                f"{where} ({block.kind}) out_channels={ch!r}; must be an int in 1..{MAX_CHANNELS}"
            )
        if not _is_int(k) or not 1 <= k <= MAX_KERNEL or k % 2 == 0:
            raise GenomeError(
                f"{where} ({block.kind}) kernel_size={k!r}; must be an odd int in 1..{MAX_KERNEL}"
            )
    elif block.kind == "pool":
        if block.pool_type not in POOL_TYPES:
            raise GenomeError(f"{where} (pool) pool_type={block.pool_type!r}; allowed: {list(POOL_TYPES)}")
    elif block.kind == "fc":
        u = block.units
        if not _is_int(u) or not 1 <= u <= MAX_UNITS:
            raise GenomeError(f"{where} (fc) units={u!r}; must be an int in 1..{MAX_UNITS}")

    # Inputs: arity, then each index refers to an earlier body block or the image.
    arity = _ARITY[block.kind]
    if len(block.inputs) != arity:
        raise GenomeError(
            f"{where} ({block.kind}) has {len(block.inputs)} input(s) {list(block.inputs)}; "
            f"{block.kind} blocks take exactly {arity}"
        )
    for src in block.inputs:
        if not _is_int(src):
            raise GenomeError(f"{where} ({block.kind}) input {src!r} is not an int")
        if src < -1 or src >= n_body:
            raise GenomeError(
                f"{where} ({block.kind}) has dangling input {src}: the genome has blocks "
                f"0..{n_body - 1} and -1 (the input image)"
            )
        if src >= index:
            raise GenomeError(
                f"{where} ({block.kind}) input {src} is a forward reference or cycle: inputs must be "
                f"earlier blocks (< {index}) or -1 (the input image)"
            )


#: Default head: one hidden FC layer of 128 units (+ the implicit classifier).
DEFAULT_HEAD: tuple[Block, ...] = (Block("fc", units=128),)


@dataclass(frozen=True)
class Genome:
    """An immutable network description: a body DAG of blocks and an FC head.

    Equality and hashing are by content. Creating a genome validates it and
    raises :class:`GenomeError` on any violation.

    Args:
        blocks: Topologically ordered body blocks (at least one). The body
            output is the last block; blocks that do not feed it (dead ends)
            are allowed, counted by :meth:`spectrum`, and skipped by the builder.
        head: Hidden ``fc`` blocks after the body (``Linear`` + ``ReLU`` each);
            may be empty. The classifier ``Linear`` is implicit.
    """

    blocks: tuple[Block, ...]
    head: tuple[Block, ...] = field(default=DEFAULT_HEAD)

    def __post_init__(self) -> None:
        for name in ("blocks", "head"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                if isinstance(value, str | bytes) or not isinstance(value, Iterable):
                    raise GenomeError(f"Genome.{name} must be a sequence of Block, got {value!r}")
                object.__setattr__(self, name, tuple(value))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Check every rule; raise :class:`GenomeError` naming the first violation."""
        if not self.blocks:
            raise GenomeError("a genome needs at least one body block; got none")
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            _check_block(i, block, n, in_head=False)
        for i, block in enumerate(self.head):
            _check_block(i, block, n, in_head=True)

    # ------------------------------------------------------------- properties
    @property
    def num_blocks(self) -> int:
        """Number of body blocks (the head is not counted)."""
        return len(self.blocks)

    @property
    def output_index(self) -> int:
        """Index of the body output block (the last one)."""
        return len(self.blocks) - 1

    def spectrum(self) -> Spectrum:
        """``(n_conv, n_pool, n_sconv, n_sum, n_concat)`` over all body blocks (paper 3.2)."""
        counts = {k: 0 for k in SPECTRUM_KINDS}
        for block in self.blocks:
            counts[block.kind] += 1
        return (counts["conv"], counts["pool"], counts["sconv"], counts["sum"], counts["concat"])

    def consumers(self, index: int) -> list[int]:
        """Indices of body blocks that take ``index`` (``-1``: the image) as an input."""
        return [j for j, b in enumerate(self.blocks) if index in b.inputs]

    def live_blocks(self) -> list[int]:
        """Sorted indices of body blocks the output depends on (the output included)."""
        live = {self.output_index}
        for j in range(self.output_index, -1, -1):
            if j in live:
                live.update(src for src in self.blocks[j].inputs if src >= 0)
        return sorted(live)

    # ----------------------------------------------------------- serialising
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``schema_version``, ``blocks`` and ``head``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "blocks": [b.to_dict() for b in self.blocks],
            "head": [b.to_dict() for b in self.head],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Genome:
        """Parse and validate a dict written by :meth:`to_dict`.

        Raises:
            GenomeError: Wrong or missing schema version, unknown fields, or an
                invalid genome.
        """
        if not isinstance(d, Mapping):
            raise GenomeError(f"a genome must be a JSON object, got {type(d).__name__}")
        version = d.get("schema_version")
        if version is None:
            raise GenomeError(f"genome has no 'schema_version'; expected {SCHEMA_VERSION}")
        if version != SCHEMA_VERSION:
            raise GenomeError(f"unsupported genome schema_version {version!r}; supported: {SCHEMA_VERSION}")
        unknown = sorted(set(d) - _GENOME_KEYS)
        if unknown:
            raise GenomeError(f"unknown genome field(s) {unknown}; allowed: {sorted(_GENOME_KEYS)}")
        if "blocks" not in d:
            raise GenomeError("genome has no 'blocks' list")
        blocks, head = d["blocks"], d.get("head", [b.to_dict() for b in DEFAULT_HEAD])
        for name, value in (("blocks", blocks), ("head", head)):
            if not isinstance(value, list | tuple):
                raise GenomeError(f"genome '{name}' must be a list of block objects, got {value!r}")
        return cls(
            blocks=tuple(Block.from_dict(b) for b in blocks),
            head=tuple(Block.from_dict(b) for b in head),
        )

    def to_json(self, *, indent: int | None = None) -> str:
        """Serialise to JSON (deterministic: same genome, same text)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> Genome:
        """Parse and validate JSON written by :meth:`to_json`.

        Raises:
            GenomeError: Malformed JSON or an invalid genome.
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
            raise GenomeError(f"malformed genome JSON: {exc}") from None
        return cls.from_dict(data)

    # --------------------------------------------------------------- display
    def summary(self) -> str:
        """One readable line, e.g. ``conv3x3/32 > pool/max > sum(1,-1) | fc128``.

        Skip blocks show their inputs; a single-input block shows ``@i`` when its
        input is not the previous block.
        """
        parts = []
        for i, b in enumerate(self.blocks):
            if b.kind in ("sum", "concat"):
                parts.append(f"{b.kind}({b.inputs[0]},{b.inputs[1]})")
            elif b.inputs[0] != i - 1:
                parts.append(f"{b.label()}@{b.inputs[0]}")
            else:
                parts.append(b.label())
        head = " > ".join(b.label() for b in self.head) or "linear"
        return f"{' > '.join(parts)} | {head}"

    def __str__(self) -> str:
        return self.summary()


def _as_spectrum(x: Genome | Sequence[float], name: str) -> tuple[float, ...]:
    if isinstance(x, Genome):
        return tuple(float(v) for v in x.spectrum())
    if isinstance(x, str | bytes) or not isinstance(x, Sequence) or len(x) != len(SPECTRUM_KINDS):
        raise ValueError(
            f"{name} must be a Genome or a sequence of {len(SPECTRUM_KINDS)} numbers "
            f"{SPECTRUM_KINDS}, got {x!r}"
        )
    return tuple(float(v) for v in x)


def spectrum_distance(
    a: Genome | Sequence[float], b: Genome | Sequence[float], scale: Sequence[float] | None = None
) -> float:
    """Euclidean distance between two spectra (paper eq. 3).

    Args:
        a: A genome or a 5-tuple spectrum.
        b: A genome or a 5-tuple spectrum.
        scale: Optional non-negative weight per spectrum dimension; each
            difference is multiplied by its weight before squaring.

    Returns:
        ``sqrt(sum_i (scale_i * (a_i - b_i))**2)``.

    Example:
        >>> spectrum_distance((4, 0, 0, 0, 0), (0, 0, 0, 0, 3))
        5.0
    """
    sa, sb = _as_spectrum(a, "a"), _as_spectrum(b, "b")
    if scale is None:
        weights: tuple[float, ...] = (1.0,) * len(sa)
    else:
        weights = _as_spectrum(scale, "scale")
        if any(w < 0 or math.isnan(w) for w in weights):
            raise ValueError(f"scale weights must be non-negative, got {tuple(scale)!r}")
    return math.sqrt(sum((w * (x - y)) ** 2 for w, x, y in zip(weights, sa, sb, strict=True)))
