"""The initial-population prior: random genomes within the size budget, spread apart in spectrum.

Algorithm 1's line 1 (:func:`initial_population`: genomes pairwise at least
``min_distance`` apart in spectrum distance, eq. 3), and the draws the other
ways take from the same prior (``random`` search's trials and ``niche``'s
random immigrants: :func:`random_genome_far_from` with no genome to keep away
from). Every draw takes its randomness from the ``random.Random`` it is given.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from gmsearch.nets.genome import DEFAULT_HEAD, SPECTRUM_KINDS, Block, Genome, spectrum_distance
from gmsearch.search.mutations import SizeBudget, random_unary


def random_genome(
    rng: random.Random,
    *,
    min_blocks: int = 2,
    max_blocks: int = 8,
    budget: SizeBudget | None = None,
    max_tries: int = 1000,
) -> Genome:
    """A random genome: a chain of blocks with skip connections from earlier nodes.

    The number of body blocks is uniform in ``[min_blocks, max_blocks]``
    (``max_blocks`` is capped by ``budget.max_blocks``). Each genome draws its
    own random preference over the five spectrum kinds, so spectra are diverse.
    Block 0 is never a skip block. The head is :data:`~gmsearch.genome.DEFAULT_HEAD`.

    Raises:
        ValueError: Bad block bounds, or no genome within ``budget`` after ``max_tries``.
    """
    if budget is not None:
        max_blocks = min(max_blocks, budget.max_blocks)
    if not 1 <= min_blocks <= max_blocks:
        raise ValueError(
            f"need 1 <= min_blocks <= max_blocks (after the budget cap), got {min_blocks}..{max_blocks}"
        )
    for _ in range(max_tries):
        n = rng.randint(min_blocks, max_blocks)
        # Squared uniforms make some kinds dominate, spreading spectra apart.
        prefs = [rng.random() ** 2 + 1e-3 for _ in SPECTRUM_KINDS]
        blocks: list[Block] = []
        for i in range(n):
            allowed = len(SPECTRUM_KINDS) if i > 0 else 3  # block 0 is conv, pool or sconv
            kind = rng.choices(SPECTRUM_KINDS[:allowed], weights=prefs[:allowed])[0]
            if kind in ("sum", "concat"):
                blocks.append(Block(kind, (i - 1, rng.randrange(-1, i - 1))))
            else:
                blocks.append(random_unary(kind, i - 1, rng))
        genome = Genome(tuple(blocks), head=DEFAULT_HEAD)
        if budget is None or budget.allows(genome):
            return genome
    raise ValueError(f"no random genome within {budget} after {max_tries} tries; loosen the budget")


def _max_possible_distance(max_blocks: int) -> float:
    # Two spectra with at most max_blocks blocks each are at most this far apart.
    return math.sqrt(2.0) * max_blocks


def random_genome_far_from(
    existing: Sequence[Genome],
    min_distance: float,
    rng: random.Random,
    *,
    max_tries: int = 10000,
    budget: SizeBudget | None = None,
    min_blocks: int = 2,
    max_blocks: int = 8,
) -> Genome:
    """One random genome whose spectrum is at least ``min_distance`` from every ``existing`` one.

    Raises:
        ValueError: ``min_distance`` cannot be met after ``max_tries`` random genomes.
    """
    found = initial_population(
        1, min_distance, rng, max_tries=max_tries, budget=budget, existing=existing,
        min_blocks=min_blocks, max_blocks=max_blocks,
    )
    return found[0]


def initial_population(
    size: int,
    min_distance: float,
    rng: random.Random,
    *,
    max_tries: int = 10000,
    budget: SizeBudget | None = None,
    existing: Sequence[Genome] = (),
    min_blocks: int = 2,
    max_blocks: int = 8,
) -> list[Genome]:
    """Random genomes pairwise at least ``min_distance`` apart in spectrum (Algorithm 1, line 1).

    Args:
        size: How many genomes to return.
        min_distance: Smallest allowed spectrum distance between any two of
            them and between each of them and every genome in ``existing``.
        rng: Source of all randomness.
        max_tries: Random genomes drawn in total before giving up.
        budget: Size limits of every genome.
        existing: Genomes the new ones must also keep away from.
        min_blocks: Fewest body blocks of a random genome.
        max_blocks: Most body blocks of a random genome.

    Raises:
        ValueError: Bad arguments, or ``min_distance`` cannot be met after ``max_tries``.
    """
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be a non-negative int, got {size!r}")
    if not min_distance >= 0:
        raise ValueError(f"min_distance must be >= 0, got {min_distance!r}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries!r}")
    cap = min(max_blocks, budget.max_blocks) if budget is not None else max_blocks
    others = [g.spectrum() for g in existing]
    reachable = max([cap, *(sum(s) for s in others)])
    impossible = (size > 1 or bool(others)) and min_distance > _max_possible_distance(reachable)
    chosen: list[Genome] = []
    tries = 0
    while len(chosen) < size and not impossible and tries < max_tries:
        tries += 1
        candidate = random_genome(rng, min_blocks=min_blocks, max_blocks=max_blocks, budget=budget)
        spectrum = candidate.spectrum()
        if all(spectrum_distance(spectrum, s) >= min_distance for s in others):
            chosen.append(candidate)
            others.append(spectrum)
    if len(chosen) < size:
        raise ValueError(
            f"could not find {size} genome(s) with spectrum distance >= {min_distance} "
            f"(to each other and to {len(existing)} existing) after {tries} tries (found {len(chosen)}); "
            f"lower min_distance (spectra of <= {cap} blocks are at most "
            f"{_max_possible_distance(cap):.2f} apart) or raise max_blocks"
        )
    return chosen
