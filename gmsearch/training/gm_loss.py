"""Gradient misalignment (paper eq. 1) and its variants.

The GM loss compares, per sample, the input gradient of the child's
cross-entropy with the (frozen) reference's and averages their cosine
similarity. Minimising ``CE + lam * GM`` (eq. 2) pushes the child's input
gradients away from the reference's. The child's gradient is taken with
``create_graph=True`` so the loss is differentiable w.r.t. the child's
parameters (double backprop): exact, as the paper specifies.

Variants are plugins of one registry; each maps the per-sample cosine
similarities (shape ``[N]``) to a scalar:

- ``cosine``: mean cosine similarity (paper, default).
- ``abs_cosine``: mean absolute cosine (TRS-style: orthogonal, not opposite).
- ``logsumexp``: smooth maximum over the batch, ``logsumexp(cos) - log N``
  (GAL-style), which concentrates on the most aligned samples.

The child's forward pass runs under
:class:`~gmsearch.training._double_backward.CheapDoubleBackward`, which gives
some layers closed-form double backwards with the same exact derivatives
(``fast_double_backward=False`` turns it off).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmsearch.registry import Registry
from gmsearch.training._double_backward import CheapDoubleBackward

GMReduction = Callable[[Tensor], Tensor]

registry: Registry[GMReduction] = Registry("loss")
register = registry.register
get = registry.get
names = registry.names

#: Added to squared norms so zero gradients give cosine 0, never NaN.
_NORM_EPS = 1e-20


@register("cosine")
def cosine(cos: Tensor) -> Tensor:
    """Mean cosine similarity of input gradients (paper eq. 1, default)."""
    return cos.mean()


@register("abs_cosine")
def abs_cosine(cos: Tensor) -> Tensor:
    """Mean absolute cosine similarity (TRS-style orthogonality)."""
    return cos.abs().mean()


@register("logsumexp")
def logsumexp(cos: Tensor) -> Tensor:
    """Smooth maximum of cosine similarities over the batch (GAL-style)."""
    return torch.logsumexp(cos, dim=0) - math.log(cos.numel())


def cosine_per_sample(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of matching rows of ``a`` and ``b`` (flattened), safe at zero norm."""
    a = a.flatten(1)
    b = b.flatten(1)
    dot = (a * b).sum(dim=1)
    norm = ((a * a).sum(dim=1) + _NORM_EPS).sqrt() * ((b * b).sum(dim=1) + _NORM_EPS).sqrt()
    return dot / norm


def input_gradients(model: nn.Module, x: Tensor, y: Tensor, *, create_graph: bool = False) -> Tensor:
    """Per-sample gradient of the cross-entropy w.r.t. the input.

    Summing the per-sample losses makes row i of the result the gradient of
    sample i's own loss (exactly so for models without cross-sample layers,
    e.g. BatchNorm in eval mode).
    """
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grad


# --------------------------------------------------------------------------- GM


def _check_shapes(x: Tensor, y: Tensor, ref_grad: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be N x C x H x W, got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if ref_grad.shape != x.shape:
        raise ValueError(
            f"ref_grad must have the shape of x {tuple(x.shape)}, got {tuple(ref_grad.shape)}"
        )


def gm_objective(
    child: nn.Module,
    x: Tensor,
    y: Tensor,
    ref_grad: Tensor,
    *,
    variant: str = "cosine",
    fast_double_backward: bool = True,
) -> tuple[Tensor, Tensor]:
    """Cross-entropy and GM loss from one shared forward pass.

    Args:
        child: The network being trained.
        x: Inputs, N x C x H x W.
        y: Labels, shape [N].
        ref_grad: The reference's input gradients for (x, y), same shape as x.
        variant: Registered reduction of the per-sample cosines.
        fast_double_backward: Differentiate BatchNorm, ReLU, ``cat`` and
            adaptive average pooling twice through cheaper closed forms (the
            same exact derivatives; see the module docstring).

    Returns:
        ``(ce, gm)``: mean cross-entropy and the GM loss, both differentiable
        w.r.t. the child's parameters.
    """
    _check_shapes(x, y, ref_grad)
    reduce = get(variant)
    x = x.detach().requires_grad_(True)
    if fast_double_backward:
        with CheapDoubleBackward():
            logits = child(x)
    else:
        logits = child(x)
    per_sample = F.cross_entropy(logits, y, reduction="none")
    (grad,) = torch.autograd.grad(per_sample.sum(), x, create_graph=True)
    gm = reduce(cosine_per_sample(grad, ref_grad))
    return per_sample.mean(), gm


def gradient_misalignment(
    child: nn.Module, x: Tensor, y: Tensor, ref_grad: Tensor, *, variant: str = "cosine"
) -> Tensor:
    """The GM loss of paper eq. 1: mean cosine similarity of child and reference input gradients.

    Args:
        child: The network being trained.
        x: Inputs, N x C x H x W in [0, 1].
        y: Labels, shape [N].
        ref_grad: The reference's input gradients for (x, y), same shape as x
            (see :func:`input_gradients`).
        variant: Registered reduction (``cosine``, ``abs_cosine``, ``logsumexp``).

    Returns:
        A differentiable scalar in [-1, 1] for ``cosine``.

    Example:
        >>> g_ref = input_gradients(reference, x, y)
        >>> loss = F.cross_entropy(child(x), y) + lam * gradient_misalignment(child, x, y, g_ref)
    """
    return gm_objective(child, x, y, ref_grad, variant=variant)[1]
