"""Build a PyTorch network from a :class:`~gmsearch.genome.Genome`.

Every valid genome builds, for any input size (8x8 to 64x64 and beyond) and
any channel count. Shapes are inferred at build time (no lazy modules):

- ``conv``: ``Conv2d`` ("same" padding, no bias) + ``BatchNorm2d`` + ``ReLU``.
- ``sconv``: the same with stride 2 (an ``H x W`` map becomes
  ``ceil(H/2) x ceil(W/2)``, so never smaller than 1x1).
- ``pool``: ``MaxPool2d``/``AvgPool2d`` with kernel and stride 2 along each
  spatial dimension that is at least 2 (a dimension of size 1 is left alone;
  a 1x1 map passes through unchanged).
- ``sum``: inputs with different spatial sizes are reconciled by adaptive
  average pooling the larger to the smaller; the smaller channel count is
  zero-padded to the larger (paper 3.2); then the two are added.
- ``concat``: spatial sizes reconciled the same way, channels concatenated.
- head: adaptive average pooling to ``min(H, 4) x min(W, 4)``, flatten, one
  ``Linear`` + ``ReLU`` per ``fc`` block, then the implicit classifier
  ``Linear(…, num_classes)``.

Blocks that do not feed the body output (dead ends) are neither built nor
computed, so they have no parameters and cost nothing.

All activations are out-of-place, so networks support double backward
(``torch.autograd.grad(..., create_graph=True)``) and ``torch.func``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gmsearch.nets.genome import Genome

#: Largest spatial grid kept by the head's adaptive pooling, per dimension.
HEAD_GRID = 4

Shape = tuple[int, int, int]  # (channels, height, width)


def _image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        hw: tuple[int, ...] = (image_size, image_size)
    elif isinstance(image_size, Sequence) and not isinstance(image_size, str):
        hw = tuple(image_size)
    else:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in hw):
        raise ValueError(f"image_size must be a positive int or two positive ints, got {image_size!r}")
    return hw[0], hw[1]


def _check_positive(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _strided(size: int, kernel: int) -> int:
    """Output length of a stride-2 conv with "same" padding ``kernel // 2``."""
    return (size + 2 * (kernel // 2) - kernel) // 2 + 1


def _pool_kernel(h: int, w: int) -> tuple[int, int]:
    return (2 if h >= 2 else 1, 2 if w >= 2 else 1)


def infer_shapes(genome: Genome, in_channels: int, image_size: int | Sequence[int]) -> list[Shape]:
    """Output shape ``(C, H, W)`` of every body block (dead ends included).

    Args:
        genome: The architecture.
        in_channels: Channels of the input image.
        image_size: ``H`` (square) or ``(H, W)``.

    Returns:
        One ``(channels, height, width)`` per block of ``genome.blocks``.
    """
    h, w = _image_hw(image_size)
    image: Shape = (_check_positive("in_channels", in_channels), h, w)
    shapes: list[Shape] = []

    def shape_of(src: int) -> Shape:
        return image if src == -1 else shapes[src]

    for block in genome.blocks:
        if block.kind in ("conv", "sconv"):
            c, h, w = shape_of(block.inputs[0])
            assert block.out_channels is not None and block.kernel_size is not None
            if block.kind == "sconv":
                h, w = _strided(h, block.kernel_size), _strided(w, block.kernel_size)
            shapes.append((block.out_channels, h, w))
        elif block.kind == "pool":
            c, h, w = shape_of(block.inputs[0])
            kh, kw = _pool_kernel(h, w)
            shapes.append((c, h // kh, w // kw))
        else:  # sum / concat
            (c1, h1, w1), (c2, h2, w2) = shape_of(block.inputs[0]), shape_of(block.inputs[1])
            c = max(c1, c2) if block.kind == "sum" else c1 + c2
            shapes.append((c, min(h1, h2), min(w1, w2)))
    return shapes


class _Merge(nn.Module):
    """``sum``/``concat`` of two maps after reconciling spatial size (and channels for sum)."""

    def __init__(self, mode: str, size: tuple[int, int], channels: tuple[int, int]) -> None:
        super().__init__()
        self.mode = mode
        self.size = size
        self.channels = channels

    def _fit(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.adaptive_avg_pool2d(x, self.size)
        if self.mode == "sum" and channels < max(self.channels):
            # Zero-pad the channel dimension (paper 3.2): F.pad pads dims from the last.
            x = F.pad(x, (0, 0, 0, 0, 0, max(self.channels) - channels))
        return x

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = self._fit(a, self.channels[0]), self._fit(b, self.channels[1])
        return a + b if self.mode == "sum" else torch.cat((a, b), dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, size={self.size}, channels={self.channels}"


@dataclass(frozen=True)
class _LayerPlan:
    """Static description of the network used by both the builder and the estimators."""

    live: tuple[int, ...]
    shapes: tuple[Shape, ...]
    head_in: int
    head_grid: tuple[int, int]
    fc_sizes: tuple[tuple[int, int], ...]  # (in_features, out_features), classifier last


def _plan(genome: Genome, in_channels: int, num_classes: int, image_size: int | Sequence[int]) -> _LayerPlan:
    _check_positive("num_classes", num_classes)
    shapes = infer_shapes(genome, in_channels, image_size)
    c, h, w = shapes[genome.output_index]
    grid = (min(h, HEAD_GRID), min(w, HEAD_GRID))
    features = c * grid[0] * grid[1]
    fc_sizes = []
    for block in genome.head:
        assert block.units is not None
        fc_sizes.append((features, block.units))
        features = block.units
    fc_sizes.append((features, num_classes))
    return _LayerPlan(
        live=tuple(genome.live_blocks()),
        shapes=tuple(shapes),
        head_in=c * grid[0] * grid[1],
        head_grid=grid,
        fc_sizes=tuple(fc_sizes),
    )


class GenomeNet(nn.Module):
    """The network a genome describes (see the module docstring for the layers).

    Args:
        genome: The architecture; kept as ``self.genome``.
        in_channels: Input channels (1 for grey, 3 for RGB).
        num_classes: Outputs of the classifier.
        image_size: ``H`` (square) or ``(H, W)`` of the inputs the net expects.
        mean: Optional per-channel mean subtracted from inputs in ``[0, 1]``.
        std: Optional per-channel std dividing inputs (after ``mean``).

    Attributes:
        genome: The genome it was built from.
        shapes: ``(C, H, W)`` of every body block's output.
        live: Indices of the body blocks that are computed.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        genome: Genome,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int | Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(genome, Genome):
            raise TypeError(f"genome must be a gmsearch Genome, got {type(genome).__name__}")
        plan = _plan(genome, in_channels, num_classes, image_size)
        self.genome = genome
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = _image_hw(image_size)
        self.shapes = plan.shapes
        self.live = plan.live
        self._normalize = mean is not None or std is not None
        mean_t = torch.as_tensor(mean if mean is not None else [0.0] * in_channels, dtype=torch.float32)
        std_t = torch.as_tensor(std if std is not None else [1.0] * in_channels, dtype=torch.float32)
        if mean_t.shape != (in_channels,) or std_t.shape != (in_channels,) or bool((std_t <= 0).any()):
            raise ValueError(
                f"mean and std must have {in_channels} values (one per channel), std > 0; "
                f"got mean={mean!r}, std={std!r}"
            )
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

        image: Shape = (in_channels, *self.image_size)
        live = set(plan.live)
        layers: list[nn.Module] = []
        for i, block in enumerate(genome.blocks):
            if i not in live:
                layers.append(nn.Identity())  # dead end: never called
                continue
            shape_in = [image if s == -1 else plan.shapes[s] for s in block.inputs]
            if block.kind in ("conv", "sconv"):
                assert block.out_channels is not None and block.kernel_size is not None
                k = block.kernel_size
                layers.append(
                    nn.Sequential(
                        nn.Conv2d(
                            shape_in[0][0], block.out_channels, k,
                            stride=2 if block.kind == "sconv" else 1, padding=k // 2, bias=False,
                        ),
                        nn.BatchNorm2d(block.out_channels),
                        nn.ReLU(inplace=False),
                    )
                )
            elif block.kind == "pool":
                kernel = _pool_kernel(shape_in[0][1], shape_in[0][2])
                if kernel == (1, 1):
                    layers.append(nn.Identity())
                elif block.pool_type == "max":
                    layers.append(nn.MaxPool2d(kernel, stride=kernel))
                else:
                    layers.append(nn.AvgPool2d(kernel, stride=kernel))
            else:
                _, h, w = plan.shapes[i]
                layers.append(_Merge(block.kind, (h, w), (shape_in[0][0], shape_in[1][0])))
        self.body = nn.ModuleList(layers)

        head: list[nn.Module] = [nn.AdaptiveAvgPool2d(plan.head_grid), nn.Flatten()]
        for fan_in, fan_out in plan.fc_sizes[:-1]:
            head += [nn.Linear(fan_in, fan_out), nn.ReLU(inplace=False)]
        head.append(nn.Linear(*plan.fc_sizes[-1]))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(batch, num_classes)`` for images ``(batch, C, H, W)``."""
        if self._normalize:
            x = (x - self.mean) / self.std
        outputs: dict[int, torch.Tensor] = {-1: x}
        for i in self.live:
            inputs = self.genome.blocks[i].inputs
            layer = self.body[i]
            if len(inputs) == 2:
                outputs[i] = layer(outputs[inputs[0]], outputs[inputs[1]])
            else:
                outputs[i] = layer(outputs[inputs[0]])
        return self.head(outputs[self.genome.output_index])

    def extra_repr(self) -> str:
        return f"genome={self.genome.summary()!r}"


def build(
    genome: Genome,
    in_channels: int,
    num_classes: int,
    image_size: int | Sequence[int],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> GenomeNet:
    """Build the network a genome describes.

    Args:
        genome: The architecture.
        in_channels: Input channels (1 for grey, 3 for RGB).
        num_classes: Number of classes (outputs of the implicit classifier).
        image_size: ``H`` (square) or ``(H, W)``.
        mean: Optional per-channel input mean (normalisation lives in the model).
        std: Optional per-channel input std.

    Returns:
        A :class:`GenomeNet` (``nn.Module``) with ``.genome`` set.

    Example:
        >>> from gmsearch.genome import Block, Genome
        >>> g = Genome((Block("conv", (-1,), out_channels=8, kernel_size=3),))
        >>> build(g, 1, 10, 16)(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """
    return GenomeNet(
        genome, in_channels=in_channels, num_classes=num_classes, image_size=image_size, mean=mean, std=std
    )


def count_params(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def estimate_params(
    genome: Genome, in_channels: int, num_classes: int, image_size: int | Sequence[int]
) -> int:
    """Parameter count of ``build(genome, ...)`` without building it (exact).

    Counts conv weights (no bias), BatchNorm affine weights and biases, and
    ``Linear`` weights and biases of live blocks and the head.
    """
    plan = _plan(genome, in_channels, num_classes, image_size)
    total = 0
    for i in plan.live:
        block = genome.blocks[i]
        if block.kind in ("conv", "sconv"):
            assert block.out_channels is not None and block.kernel_size is not None
            src = block.inputs[0]
            c_in = in_channels if src == -1 else plan.shapes[src][0]
            total += c_in * block.out_channels * block.kernel_size**2 + 2 * block.out_channels
    total += sum(fan_in * fan_out + fan_out for fan_in, fan_out in plan.fc_sizes)
    return total


def estimate_flops(
    genome: Genome, in_channels: int, num_classes: int, image_size: int | Sequence[int]
) -> int:
    """Multiply-accumulates of one forward pass for a single image (an estimate).

    Counts ``C_in * C_out * k * k * H_out * W_out`` per live conv/sconv block and
    ``in * out`` per ``Linear``; BatchNorm, activations, pooling, sums, padding
    and concatenation are ignored (they are cheap next to the convolutions).
    """
    plan = _plan(genome, in_channels, num_classes, image_size)
    total = 0
    for i in plan.live:
        block = genome.blocks[i]
        if block.kind in ("conv", "sconv"):
            assert block.kernel_size is not None
            src = block.inputs[0]
            c_in = in_channels if src == -1 else plan.shapes[src][0]
            c_out, h, w = plan.shapes[i]
            total += c_in * c_out * block.kernel_size**2 * h * w
    total += sum(fan_in * fan_out for fan_in, fan_out in plan.fc_sizes)
    return total


def block_signatures(genome: Genome) -> list[str]:
    """One signature per body block: its kind, settings and (recursively) its inputs' signatures.

    Two blocks with the same signature compute the same function of the image
    up to their weights (same layer, same position in the graph), so a child
    block whose signature its parent has was left unchanged by the mutation.
    """
    signatures: list[str] = []
    for block in genome.blocks:
        inputs = ",".join("image" if i < 0 else signatures[i] for i in block.inputs)
        settings = (block.kind, block.out_channels, block.kernel_size, block.pool_type, block.units)
        signatures.append(f"{settings}({inputs})")
    return signatures


def inherit_weights(net: GenomeNet, parent: GenomeNet | dict[str, torch.Tensor], parent_genome: Genome) -> list[int]:
    """Copy into ``net`` the weights of every body block its parent had unchanged (same signature and shapes).

    The head is copied too when both nets end in the same block. Every other
    block keeps its fresh initialisation. Returns the child's copied block indices.

    Args:
        net: The child, freshly built.
        parent: The parent's trained network or its ``state_dict``.
        parent_genome: The parent's genome.
    """
    state = parent.state_dict() if isinstance(parent, nn.Module) else parent
    theirs = {sig: i for i, sig in reversed(list(enumerate(block_signatures(parent_genome))))}  # first wins
    mine = block_signatures(net.genome)
    prefixes: dict[str, str] = {}
    for i, sig in enumerate(mine):
        if sig in theirs:
            prefixes[f"body.{i}."] = f"body.{theirs[sig]}."
    if mine[net.genome.output_index] == block_signatures(parent_genome)[parent_genome.output_index] \
            and net.genome.head == parent_genome.head:
        prefixes["head."] = "head."
    own = net.state_dict()
    copied: set[int] = set()
    updated: dict[str, torch.Tensor] = {}
    for key, value in own.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            continue
        source = prefixes[prefix] + key[len(prefix):]
        if source in state and state[source].shape == value.shape:
            updated[key] = state[source].detach().clone()
            if prefix.startswith("body."):
                copied.add(int(prefix.split(".")[1]))
    net.load_state_dict({**own, **updated})
    return sorted(copied)
