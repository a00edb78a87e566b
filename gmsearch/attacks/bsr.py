"""BSR: MI-FGSM over block-shuffled and rotated copies of the image (Wang et al. 2024)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gmsearch.attacks._base import _check_int, _check_number, register
from gmsearch.attacks.mifgsm import MIFGSM


def split_lengths(total: int, draws: Tensor) -> list[int]:
    """``total`` split in proportion to ``draws`` (uniforms), rounded; the largest part absorbs the rounding."""
    parts = torch.round(draws / draws.sum().clamp_min(1e-12) * total).long()
    parts[parts.argmax()] += total - int(parts.sum())
    return parts.tolist()


def _strip_maps(size: int, draws: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split ``size`` into ``n`` strips and shuffle them; per output position: its strip, the strip's start in
    the source, the position inside the strip and the strip's length."""
    lengths = split_lengths(size, draws[:n])
    order = torch.argsort(draws[n : 2 * n]).tolist()
    starts = [sum(lengths[:i]) for i in range(n)]
    strip: list[int] = []
    source: list[int] = []
    local: list[int] = []
    length: list[int] = []
    for k in order:
        strip += [k] * lengths[k]
        source += [starts[k]] * lengths[k]
        local += range(lengths[k])
        length += [lengths[k]] * lengths[k]
    return torch.tensor(strip), torch.tensor(source), torch.tensor(local), torch.tensor(length)


def block_shuffle_rotate_grid(
    height: int, width: int, draws: Tensor, n: int, max_angle: float
) -> tuple[Tensor, Tensor]:
    """Where each output pixel of one shuffled-and-rotated copy samples the source image.

    The image is cut into ``n`` strips of random lengths along a random axis,
    the strips are shuffled, and each is cut into ``n`` blocks of random
    lengths along the other axis, shuffled within the strip; every block is
    rotated about its centre by its own angle in ``[-max_angle, max_angle]``
    degrees (bilinear, never reading outside the block; corners it leaves
    empty are zero).

    Args:
        height: Image height.
        width: Image width.
        draws: ``1 + 2 n + 3 n**2`` uniforms in ``[0, 1)`` (the copy's randomness).
        n: Blocks per axis.
        max_angle: Largest rotation in degrees.

    Returns:
        ``grid`` ``(H, W, 2)`` in ``grid_sample``'s ``align_corners=True`` coordinates and ``mask`` ``(H, W)``
        (1 where the pixel lies inside its rotated block).
    """
    rows_first = bool(draws[0] < 0.5)
    size_a, size_b = (height, width) if rows_first else (width, height)
    strip, src_a0, local_a, len_a = _strip_maps(size_a, draws[1:], n)
    per_strip = draws[1 + 2 * n :].view(n, 3 * n)
    cols = [_strip_maps(size_b, per_strip[k], n) for k in range(n)]
    piece, src_b0, local_b, len_b = (torch.stack([c[i] for c in cols])[strip] for i in range(4))  # (A, B)
    angles = (2 * per_strip[:, 2 * n :] - 1) * math.radians(max_angle)  # (strip, source piece)
    theta = angles[strip[:, None], piece].double()
    centre_a, centre_b = (len_a[:, None].double() - 1) / 2, (len_b.double() - 1) / 2
    da, db = local_a[:, None].double() - centre_a, local_b.double() - centre_b
    cos, sin = torch.cos(theta), torch.sin(theta)
    sa, sb = centre_a + cos * da + sin * db, centre_b - sin * da + cos * db
    inside = (sa >= -0.5) & (sa <= len_a[:, None] - 0.5) & (sb >= -0.5) & (sb <= len_b - 0.5)
    sa = src_a0[:, None] + torch.minimum(sa.clamp_min(0), len_a[:, None] - 1)
    sb = src_b0 + torch.minimum(sb.clamp_min(0), len_b - 1)
    rows, cols_ = (sa, sb) if rows_first else (sb.T, sa.T)
    mask = inside if rows_first else inside.T

    def normalised(coord: Tensor, size: int) -> Tensor:
        return coord * (2 / (size - 1)) - 1 if size > 1 else torch.zeros_like(coord)

    grid = torch.stack((normalised(cols_, width), normalised(rows, height)), dim=-1)
    return grid.float(), mask.float()


@register("bsr")
class BSR(MIFGSM):
    """Block shuffle and rotation: MI-FGSM over shuffled, rotated block copies (Wang et al. 2024, CVPR).

    Paper: "Boosting Adversarial Transferability by Block Shuffle and Rotation", arXiv:2308.10299.

    MI-FGSM whose gradient is that of the loss summed over ``num_copies``
    copies of the images, each cut into ``num_block x num_block`` blocks that
    are shuffled and rotated (see :func:`block_shuffle_rotate_grid`; one
    ``grid_sample`` makes every copy). Each copy's randomness is shared by
    the images of a chunk and drawn from the attack's generator. Defaults
    are the paper's (2x2 blocks, 20 copies, angles within 24 degrees).

    Args:
        eps: L-inf budget.
        alpha: Step size.
        steps: Number of steps.
        decay: Momentum decay factor mu.
        num_block: Blocks per axis.
        num_copies: Transformed copies per step (TransferAttack's ``num_scale``; memory grows with
            ``num_copies * batch_size``).
        max_angle: Largest rotation of a block, in degrees.
        batch_size: Images attacked at once (the draws continue from chunk to chunk).
        seed: Seeds the draws.
    """

    draws_per_step = True

    num_block: int = 2
    num_copies: int = 20
    max_angle: float = 24.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.num_block = _check_int("num_block", self.num_block, low=1)
        self.num_copies = _check_int("num_copies", self.num_copies, low=1)
        self.max_angle = _check_number("max_angle", self.max_angle)

    def transform(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """``num_copies`` shuffled-and-rotated copies, copy-major."""
        n, (batch, channels, height, width) = self.num_block, x.shape
        draws = torch.rand(self.num_copies, 1 + 2 * n + 3 * n * n, generator=generator, device=x.device).cpu()
        made = [block_shuffle_rotate_grid(height, width, d, n, self.max_angle) for d in draws]
        grids, masks = zip(*made, strict=True)
        grid, mask = torch.stack(grids).to(x.device, x.dtype), torch.stack(masks).to(x.device, x.dtype)
        # One sample per copy: the chunk's images and channels ride along as channels.
        images = x.reshape(1, batch * channels, height, width).expand(self.num_copies, -1, -1, -1)
        copies = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return (copies * mask[:, None]).reshape(self.num_copies * batch, channels, height, width)
