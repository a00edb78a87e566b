"""Networks: the genome (a DAG of blocks), the builder, the hand-engineered zoo, torchvision
architectures adapted to small images, and the frozen reference (trained once, cached)."""

from __future__ import annotations

from gmsearch.nets import architectures, references, zoo
from gmsearch.nets.builder import build, count_params, estimate_flops, estimate_params
from gmsearch.nets.genome import Block, Genome, GenomeError, spectrum_distance

__all__ = [
    "Block",
    "Genome",
    "GenomeError",
    "architectures",
    "build",
    "count_params",
    "estimate_flops",
    "estimate_params",
    "references",
    "spectrum_distance",
    "zoo",
]
