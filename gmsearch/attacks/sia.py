"""SIA: MI-FGSM over copies whose blocks are each transformed at random (Wang et al. 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gmsearch.attacks._base import _check_int, _check_number, register
from gmsearch.attacks.mifgsm import MIFGSM

#: The block transformations (TransferAttack's list): the first five move pixels within the block,
#: ``scale`` multiplies the block by a random factor in [0, 1), ``add_noise`` adds uniform noise and clips.
SIA_OPS = ("vertical_shift", "horizontal_shift", "vertical_flip", "horizontal_flip", "rotate180", "scale", "add_noise")


def _cuts(size: int, n: int, draws: Tensor) -> list[int]:
    """``0``, ``n - 1`` distinct random cut points in ``1..size-1`` sorted, ``size`` (fewer when ``size <= n``)."""
    inner = (torch.argsort(draws[: size - 1])[: n - 1] + 1).tolist() if size > 1 else []
    return [0, *sorted(inner), size]


def _block_index(length: int, op: str, shift: int) -> Tensor:
    """Source position inside a block of ``length`` along one axis for each output position."""
    positions = torch.arange(length)
    if (op == "vertical_shift" or op == "horizontal_shift") and length:
        return (positions - shift) % length  # torch.roll by shift
    return positions.flip(0) if op in ("flip", "rotate180") else positions


def structure_maps(
    height: int, width: int, draws: Tensor, n: int, ops: tuple[str, ...]
) -> tuple[Tensor, Tensor, Tensor]:
    """One copy's block transformations as a gather and two per-pixel maps.

    Cuts the image into ``n x n`` blocks at random cut points and gives every
    block one of ``ops`` at random.

    Args:
        height: Image height.
        width: Image width.
        draws: ``height + width + 3 n**2`` uniforms in ``[0, 1)`` (the copy's randomness).
        n: Blocks per axis.
        ops: The transformations to choose from (names in :data:`SIA_OPS`).

    Returns:
        ``index`` ``(H * W,)``: the source pixel of each output pixel (flattened); ``factor`` ``(H, W)``: the
        multiplier (``scale`` blocks); ``noisy`` ``(H, W)``: 1 on ``add_noise`` blocks.
    """
    rows = _cuts(height, n, draws[:height])
    cols = _cuts(width, n, draws[height : height + width])
    per_block = draws[height + width :].view(n * n, 3)
    index = torch.arange(height * width).view(height, width)
    source = index.clone()
    factor, noisy = torch.ones(height, width), torch.zeros(height, width)
    for i in range(len(rows) - 1):
        for j in range(len(cols) - 1):
            r0, r1, c0, c1 = rows[i], rows[i + 1], cols[j], cols[j + 1]
            u = per_block[i * n + j]
            op = ops[min(int(u[0] * len(ops)), len(ops) - 1)]
            h, w = r1 - r0, c1 - c0
            along_rows = {"vertical_shift": op, "vertical_flip": "flip", "rotate180": "rotate180"}.get(op, "")
            along_cols = {"horizontal_shift": op, "horizontal_flip": "flip", "rotate180": "rotate180"}.get(op, "")
            shift = int(u[1] * (h if op == "vertical_shift" else w))
            rr = r0 + _block_index(h, along_rows, shift)
            cc = c0 + _block_index(w, along_cols, shift)
            source[r0:r1, c0:c1] = index[rr[:, None], cc]
            if op == "scale":
                factor[r0:r1, c0:c1] = float(u[2])
            elif op == "add_noise":
                noisy[r0:r1, c0:c1] = 1.0
    return source.flatten(), factor, noisy


@register("sia")
class SIA(MIFGSM):
    """Structure invariant attack: MI-FGSM over copies with transformed blocks (Wang et al. 2023, ICCV).

    Paper: "Structure Invariant Transformation for better Adversarial Transferability", arXiv:2309.14700.

    MI-FGSM whose gradient is that of the loss summed over ``num_copies``
    copies of the images, each cut into ``num_block x num_block`` blocks at
    random cut points, every block transformed by one of ``ops`` chosen at
    random (TransferAttack's list, :data:`SIA_OPS`: shifts, flips, rotation,
    scaling, noise of ``noise`` in L-inf). A copy's cuts and choices are
    shared by the images of a chunk; the noise is drawn per pixel; all from
    the attack's generator. Defaults: 3x3 blocks, 20 copies.

    Args:
        eps: L-inf budget.
        alpha: Step size.
        steps: Number of steps.
        decay: Momentum decay factor mu.
        num_block: Blocks per axis.
        num_copies: Transformed copies per step (TransferAttack's ``num_scale``; memory grows with
            ``num_copies * batch_size``).
        ops: The block transformations to choose from.
        noise: L-inf size of ``add_noise``'s uniform noise.
        batch_size: Images attacked at once (the draws continue from chunk to chunk).
        seed: Seeds the draws.
    """

    draws_per_step = True

    num_block: int = 3
    num_copies: int = 20
    ops: tuple[str, ...] = SIA_OPS
    noise: float = 16 / 255

    def __post_init__(self) -> None:
        super().__post_init__()
        self.num_block = _check_int("num_block", self.num_block, low=1)
        self.num_copies = _check_int("num_copies", self.num_copies, low=1)
        ops: Any = self.ops
        if isinstance(ops, str) or not isinstance(ops, list | tuple) or not ops or not set(ops) <= set(SIA_OPS):
            raise ValueError(f"ops must be a non-empty list of names from {', '.join(SIA_OPS)}; got {ops!r}")
        self.ops = tuple(ops)
        self.noise = _check_number("noise", self.noise)

    def transform(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """``num_copies`` structure-transformed copies, copy-major."""
        n, (batch, channels, height, width) = self.num_block, x.shape
        draws = torch.rand(self.num_copies, height + width + 3 * n * n, generator=generator, device=x.device).cpu()
        maps = [structure_maps(height, width, d, n, self.ops) for d in draws]
        index, factor, noisy = (torch.stack(m).to(x.device) for m in zip(*maps, strict=True))
        copies = x.flatten(2)[:, :, index].permute(2, 0, 1, 3)  # (copies, N, C, H * W)
        copies = copies.reshape(self.num_copies, batch, channels, height, width) * factor.to(x.dtype)[:, None, None]
        if "add_noise" in self.ops and bool(noisy.any()):
            noise = torch.empty_like(copies).uniform_(-self.noise, self.noise, generator=generator)
            copies = torch.where(noisy[:, None, None] > 0, torch.clamp(copies + noise, 0, 1), copies)
        return copies.reshape(self.num_copies * batch, channels, height, width)
