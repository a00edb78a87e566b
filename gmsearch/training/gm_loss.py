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

BatchNorm in the GM term (``gm_batchnorm``, ``[training] gm_batchnorm``): the
child trains in train mode, so its BatchNorm layers normalise with the
batch's statistics, while the reference's gradients (cached) and the
attacks' gradients are taken in eval mode. Three exact options, each
checked against a per-sample float64 loop in ``tests/test_losses.py``:

- ``batch`` (default, the paper's setting as written): the child's input
  gradient is that of the summed loss through train-mode BatchNorm, so row i
  also carries sample i's effect on the batch mean and variance (terms
  through the other samples). One forward pass.
- ``running``: the GM term's input gradient is taken with the running
  statistics (eval-mode BatchNorm, as the attacks see the network) in a
  second forward pass; the CE term and the running statistics' update stay
  train-mode (the CE pass runs first, so the GM pass uses this batch's
  updated running statistics). 1.34x a ``batch`` step on CPU.
- ``detached``: batch statistics, held constant in the input gradient only
  (:class:`~gmsearch.training._double_backward.HoldBatchStatistics`), so row
  i is sample i's own gradient; the parameter gradients still see the
  statistics as functions of the batch. One forward pass, 1.00x.

Why ``batch`` stays the default (``benchmarks/bench_gm_batchnorm.py``; README,
"BatchNorm in the GM term"): on the quickstart's Ref+GM (digits, ``hand_a``,
3 seeds) it transfers best, 72.3% +- 5.4 adversarial accuracy against 55.8%
+- 13.1 (``detached``, lower on every seed though its eval-mode gradients are
more misaligned) and 32.3% +- 22.8 (``running``, whose eval-mode clean
accuracy collapses to 19.8%: the CE term fits only the train-mode network).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmsearch.registry import Registry
from gmsearch.training._double_backward import CheapDoubleBackward, HoldBatchStatistics, InputGradientPass

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

#: How the GM term's input gradient of a child in train mode treats BatchNorm (module docstring).
BATCHNORM_MODES = ("batch", "running", "detached")


def check_batchnorm_mode(batchnorm: str) -> None:
    """Raise one clear line unless ``batchnorm`` is one of :data:`BATCHNORM_MODES`."""
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"gm_batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got {batchnorm!r}")


@contextlib.contextmanager
def _running_statistics(batchnorms: list[nn.Module]) -> Iterator[None]:
    """The given train-mode BatchNorm modules in eval mode (running statistics, no update) for a while."""
    for m in batchnorms:
        m.train(False)
    try:
        yield
    finally:
        for m in batchnorms:
            m.train(True)


def _train_mode_batchnorms(net: nn.Module) -> list[nn.Module]:
    return [
        m for m in net.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]


def _check_shapes(x: Tensor, y: Tensor, ref_grad: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be N x C x H x W, got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if ref_grad.shape != x.shape and (ref_grad.dim() != 5 or ref_grad.shape[1:] != x.shape or not len(ref_grad)):
        raise ValueError(
            f"ref_grad must have the shape of x {tuple(x.shape)} (one reference) or K x {tuple(x.shape)} "
            f"(K references), got {tuple(ref_grad.shape)}"
        )


def misalignment(grad: Tensor, ref_grad: Tensor, reduce: GMReduction) -> Tensor:
    """The GM term of the child's input gradients ``grad`` against one reference's (``ref_grad`` shaped like
    ``grad``) or the mean of the terms against K references' (``ref_grad`` K x ``grad``'s shape)."""
    if ref_grad.dim() == grad.dim():
        return reduce(cosine_per_sample(grad, ref_grad))
    return torch.stack([reduce(cosine_per_sample(grad, g)) for g in ref_grad]).mean()


def gm_objective(
    child: nn.Module,
    x: Tensor,
    y: Tensor,
    ref_grad: Tensor,
    *,
    variant: str = "cosine",
    fast_double_backward: bool = True,
    batchnorm: str = "batch",
) -> tuple[Tensor, Tensor]:
    """Cross-entropy and GM loss (one shared forward pass, two with ``batchnorm="running"``).

    Args:
        child: The network being trained.
        x: Inputs, N x C x H x W.
        y: Labels, shape [N].
        ref_grad: The reference's input gradients for (x, y), same shape as x; or K references' stacked
            (K x x's shape): the GM term is then the mean of the K terms (beyond the paper: misalign against
            several references, ``[training] references``).
        variant: Registered reduction of the per-sample cosines.
        fast_double_backward: Differentiate BatchNorm, ReLU, ``cat`` and
            adaptive average pooling twice through cheaper closed forms (the
            same exact derivatives; see the module docstring).
        batchnorm: How the child's input gradient treats its train-mode
            BatchNorm layers: ``batch`` (batch statistics, cross-sample terms
            included), ``running`` (running statistics, as in eval mode) or
            ``detached`` (batch statistics held constant); see the module
            docstring. The CE term and the running statistics are train-mode in all three.

    Returns:
        ``(ce, gm)``: mean cross-entropy and the GM loss, both differentiable
        w.r.t. the child's parameters.
    """
    _check_shapes(x, y, ref_grad)
    check_batchnorm_mode(batchnorm)
    reduce = get(variant)
    x = x.detach().requires_grad_(True)
    phase = InputGradientPass()
    running = _train_mode_batchnorms(child) if batchnorm == "running" else []
    # "running": first the CE term's own train-mode forward pass, which updates the running statistics
    # (in place: the GM pass saves them for its backward, so it comes after the update)
    ce = F.cross_entropy(child(x.detach()), y) if running else None
    with contextlib.ExitStack() as modes:
        if fast_double_backward:
            modes.enter_context(CheapDoubleBackward())
        if batchnorm == "detached":
            modes.enter_context(HoldBatchStatistics(phase))
        with _running_statistics(running):  # no module: nothing changes
            per_sample = F.cross_entropy(child(x), y, reduction="none")
    if ce is None:
        ce = per_sample.mean()
    phase.active = True
    try:
        (grad,) = torch.autograd.grad(per_sample.sum(), x, create_graph=True)
    finally:
        phase.active = False
    return ce, misalignment(grad, ref_grad, reduce)


def gradient_misalignment(
    child: nn.Module, x: Tensor, y: Tensor, ref_grad: Tensor, *, variant: str = "cosine", batchnorm: str = "batch"
) -> Tensor:
    """The GM loss of paper eq. 1: mean cosine similarity of child and reference input gradients.

    Args:
        child: The network being trained.
        x: Inputs, N x C x H x W in [0, 1].
        y: Labels, shape [N].
        ref_grad: The reference's input gradients for (x, y), same shape as x
            (see :func:`input_gradients`).
        variant: Registered reduction (``cosine``, ``abs_cosine``, ``logsumexp``).
        batchnorm: See :func:`gm_objective`.

    Returns:
        A differentiable scalar in [-1, 1] for ``cosine``.

    Example:
        >>> g_ref = input_gradients(reference, x, y)
        >>> loss = F.cross_entropy(child(x), y) + lam * gradient_misalignment(child, x, y, g_ref)
    """
    return gm_objective(child, x, y, ref_grad, variant=variant, batchnorm=batchnorm)[1]
