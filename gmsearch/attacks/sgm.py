"""SGM: MI-FGSM with less gradient through the residual branches of the source model (Wu et al. 2020)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gmsearch.attacks._base import _check_number, register
from gmsearch.attacks.mifgsm import MIFGSM
from gmsearch.registry import PluginError


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient scaled by ``gamma`` on the way back."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, gamma: float) -> Tensor:
        ctx.gamma = gamma
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.gamma, None


def _scale_output(gamma: float) -> Any:
    def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        return _ScaleGrad.apply(output, gamma)

    return hook


def _scale_merge_input(position: int, gamma: float) -> Any:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        scaled = list(inputs)
        scaled[position] = _ScaleGrad.apply(inputs[position], gamma)
        return tuple(scaled)

    return hook


def _torchvision_branches() -> dict[type[nn.Module], str]:
    """torchvision's residual and dense blocks, by class: the branch's last module (``""``: the block's output)."""
    try:
        from torchvision.models.densenet import _DenseLayer
        from torchvision.models.resnet import BasicBlock, Bottleneck
    except ImportError:  # torchvision is optional here
        return {}
    return {BasicBlock: "conv2", Bottleneck: "conv3", _DenseLayer: ""}


@contextmanager
def skip_gradient_hooks(model: nn.Module, gamma: float) -> Iterator[int]:
    """Scale by ``gamma`` the gradient through every residual branch of ``model`` while inside; yields their count.

    A branch is the part of a block that a skip connection goes around:

    - genome networks' ``sum``/``concat`` blocks: of the two inputs, the later
      block (the deeper path; the earlier one, or the image, is the skip) is
      scaled at the merge (a merge of a block with itself has no skip);
    - torchvision ``BasicBlock``/``Bottleneck``: the conv path (scaled after
      its last conv; BatchNorm in eval mode is linear, so this is the
      branch's output gradient), not the shortcut;
    - torchvision DenseNet layers: the new features (the concatenated input
      is the skip).

    The hooks are removed on exit, also after an error.

    Raises:
        PluginError: ``model`` has none of these blocks.
    """
    from gmsearch.nets.builder import GenomeNet  # here: importing the attacks stays light

    handles: list[RemovableHandle] = []
    branches = _torchvision_branches()
    try:
        for module in model.modules():
            if isinstance(module, GenomeNet):
                for i in module.live:
                    block = module.genome.blocks[i]
                    if block.kind in ("sum", "concat") and block.inputs[0] != block.inputs[1]:
                        later = 0 if block.inputs[0] > block.inputs[1] else 1
                        handles.append(module.body[i].register_forward_pre_hook(_scale_merge_input(later, gamma)))
            elif type(module) in branches:
                last = module.get_submodule(branches[type(module)]) if branches[type(module)] else module
                handles.append(last.register_forward_hook(_scale_output(gamma)))
        if not handles:
            raise PluginError(
                f"attack 'sgm': {type(model).__name__} has no skip connection SGM knows (genome sum/concat blocks, "
                "torchvision BasicBlock, Bottleneck or DenseNet layers); use mi_fgsm for models without one"
            )
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


@register("sgm")
class SGM(MIFGSM):
    """Skip gradient method: MI-FGSM with residual-branch gradients scaled by gamma (Wu et al. 2020, ICLR).

    Paper: "Skip Connections Matter: On the Transferability of Adversarial Examples Generated with
    ResNets", arXiv:2002.05990.

    MI-FGSM on a source with skip connections whose backward pass gives the
    residual branches ``gamma`` times their gradient (``dz_{i+1}/dz_i =
    1 + gamma * df_i/dz_i``), favouring the skips' low-level information.
    The scaling lives in hooks on the model (:func:`skip_gradient_hooks`),
    present only during the attack. ``gamma = 1`` is MI-FGSM. The paper's
    gamma is 0.2 for ResNets and 0.5 for DenseNets.

    Args:
        eps: L-inf budget.
        alpha: Step size.
        steps: Number of steps.
        decay: Momentum decay factor mu.
        gamma: Scale of the gradient through residual branches, in ``[0, 1]``.
        batch_size: Images attacked at once.
        seed: Unused (deterministic).
    """

    gamma: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        self.gamma = _check_number("gamma", self.gamma)
        if self.gamma > 1:
            raise ValueError(f"gamma must be in [0, 1] (it scales the residual gradient down), got {self.gamma!r}")

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, generator: torch.Generator) -> Tensor:
        """MI-FGSM's steps with the residual branches' gradients scaled."""
        with skip_gradient_hooks(model, self.gamma):
            return super().perturb(model, x, y, start, generator)
