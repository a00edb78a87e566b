"""Closed-form double backwards: the same exact derivatives, cheaper to differentiate twice.

Speed: the GM step differentiates the child twice. PyTorch's generic double
backward of a few layers costs far more than their arithmetic needs:
train-mode BatchNorm goes through a composite of some 30 full-size kernels;
``cat`` scatters into full-size tensors of zeros; ``relu`` and
``adaptive_avg_pool2d`` return full-size zero gradients for their inputs.
During the child's forward pass :func:`~gmsearch.training.gm_loss.gm_objective` routes those four calls
(whatever module makes them) to functions with closed-form, cheaper double
backwards. Values and derivatives are the same, exactly (checked against
PyTorch's in float64 in ``tests/test_training.py``); on CPU a GM step of the
paper's ``hand_a`` drops from about 3.3x to about 2.4x a cross-entropy step
(``benchmarks/run.py``). The rest of the gap to the ~2x arithmetic floor is
mostly PyTorch's convolution double backward, which computes weight
gradients as transposed convolutions. ``fast_double_backward=False`` turns
the routing off.

:class:`HoldBatchStatistics` is the ``gm_batchnorm="detached"`` option of the GM
step: train-mode BatchNorm whose batch statistics are constants in the input
gradient only (see :mod:`gmsearch.training.gm_loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode


def _per_channel(t: Tensor, like: Tensor) -> Tensor:
    """A per-channel vector ``(C,)`` shaped to broadcast against ``like`` ``(N, C, ...)``."""
    return t.view(1, -1, *([1] * (like.dim() - 2)))


class _BatchNormTrainBackward(torch.autograd.Function):
    """The backward of train-mode BatchNorm as a function of ``(grad_out, x, weight)``.

    Forward: PyTorch's fused kernel. Backward (the double backward of
    BatchNorm), with per channel ``r = invstd``, ``xc = x - mean``, ``M``
    elements, ``g = grad_out``, ``c = mean(g * xhat)`` and upstream gradients
    ``u`` (of ``grad_x``), ``a`` (of ``grad_weight``), ``b`` (of ``grad_bias``)::

        d g = gamma r (u - mean u) + (a r - gamma r^2 m_ux) xc + b
        d x = K c (u - mean u) + (K m_ux + a r) (g - mean g) + (K m_up - 2 K c m_ux - a c r) r xc
        d gamma = r * sum(u * p)

    where ``K = -gamma r^2``, ``m_ux = mean(u * xhat)``, ``p = g - mean g - xhat c``
    and ``m_up = mean(u * p)``: two fused reductions and five full-size passes.
    """

    @staticmethod
    def forward(
        ctx: Any, grad_out: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        # A weight of ones stands in for none: CUDA's kernel returns the two sums only with a weight.
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_out, x, weight if weight is not None else torch.ones_like(invstd), None, None, mean, invstd,
            True, 0.0, [True, True, True],
        )
        ctx.save_for_backward(grad_out, x, weight, mean, invstd, grad_weight, grad_bias)
        return grad_x, grad_weight, grad_bias

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, u: Tensor | None, a: Tensor | None, b: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        g, x, weight, mean, invstd, sum_gxhat, sum_g = ctx.saved_tensors
        m = x.numel() // x.shape[1]
        r = invstd
        zero, one = torch.zeros_like(r), torch.ones_like(r)
        gamma = weight if weight is not None else one
        g_mean, c = sum_g / m, sum_gxhat / m
        if u is not None:
            # Fused reductions: the kernel's weight and bias gradients are sum(u * (x - mean) * invstd)
            # and sum(u) (the weight of ones only makes CUDA's kernel return them).
            _, sum_uxhat, sum_u = torch.ops.aten.native_batch_norm_backward(
                u, x, one, None, None, mean, invstd, True, 0.0, [False, True, True]
            )
            _, sum_ug, _ = torch.ops.aten.native_batch_norm_backward(
                u, g, one, None, None, zero, one, True, 0.0, [False, True, False]
            )
            u_mean, m_ux = sum_u / m, sum_uxhat / m
            m_up = sum_ug / m - g_mean * u_mean - c * m_ux
        else:
            u_mean = m_ux = m_up = zero
        a = a if a is not None else zero
        b = b if b is not None else zero
        gr = gamma * r
        k = -gr * r
        xc = x - _per_channel(mean, x)
        need_g, need_x, need_w = ctx.needs_input_grad[:3]
        dg = dx = dw = None
        if need_g:
            dg = torch.addcmul(_per_channel(b - gr * u_mean, x), xc, _per_channel(k * m_ux + a * r, x))
            if u is not None:
                dg.addcmul_(u, _per_channel(gr, x))
        if need_x:
            cu, cg = k * c, k * m_ux + a * r
            cx = (k * m_up - 2 * k * c * m_ux - a * c * r) * r
            dx = torch.addcmul(_per_channel(-(cu * u_mean + cg * g_mean), x), xc, _per_channel(cx, x))
            dx.addcmul_(g, _per_channel(cg, x))
            if u is not None:
                dx.addcmul_(u, _per_channel(cu, x))
        if need_w and weight is not None and u is not None:
            dw = r * m * m_up
        return dg, dx, dw, None, None


class _BatchNormTrain(torch.autograd.Function):
    """Train-mode BatchNorm (PyTorch's kernels, running statistics updated in place)
    whose backward is :class:`_BatchNormTrainBackward`, so differentiating it twice is cheap."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None,
        running_mean: Tensor | None, running_var: Tensor | None, momentum: float, eps: float,
    ) -> Tensor:
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = _BatchNormTrainBackward.apply(grad_out, x, weight, mean, invstd)
        return (
            grad_x, grad_weight if weight is not None else None, grad_bias if ctx.has_bias else None,
            None, None, None, None,
        )


class _AdaptiveAvgPoolBackward(torch.autograd.Function):
    """The backward of ``adaptive_avg_pool2d`` as a function of the output gradient alone.

    PyTorch's own double backward also returns a (zero) gradient for the
    input, a full-size tensor of zeros; this one returns none.
    """

    @staticmethod
    def forward(ctx: Any, grad_out: Tensor, x: Tensor) -> Tensor:
        ctx.output_size = tuple(grad_out.shape[-2:])
        return torch.ops.aten._adaptive_avg_pool2d_backward(grad_out, x)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return F.adaptive_avg_pool2d(grad, ctx.output_size), None


class _AdaptiveAvgPool(torch.autograd.Function):
    """``adaptive_avg_pool2d`` whose backward is :class:`_AdaptiveAvgPoolBackward`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, output_size: Any) -> Tensor:
        ctx.save_for_backward(x)
        return torch._C._nn.adaptive_avg_pool2d(x, output_size)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return _AdaptiveAvgPoolBackward.apply(grad_out, x), None


class _Split(torch.autograd.Function):
    """The backward of ``cat``: views of the output gradient; its own backward is one ``cat``.

    PyTorch differentiates the slicing of the first backward by scattering
    each part into a full-size tensor of zeros; here the parts are joined once.
    """

    @staticmethod
    def forward(ctx: Any, grad: Tensor, dim: int, sizes: list[int]) -> tuple[Tensor, ...]:
        ctx.set_materialize_grads(False)
        ctx.dim, ctx.sizes = dim, sizes
        return tuple(grad.split(sizes, dim))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, None, None]:
        known = next((g for g in grads if g is not None), None)
        if known is None:
            return None, None, None
        parts = []
        for g, size in zip(grads, ctx.sizes, strict=True):
            if g is None:
                shape = list(known.shape)
                shape[ctx.dim] = size
                g = known.new_zeros(shape)
            parts.append(g)
        return torch.cat(parts, ctx.dim), None, None


class _Cat(torch.autograd.Function):
    """``cat`` whose backward is :class:`_Split`."""

    @staticmethod
    def forward(ctx: Any, dim: int, *tensors: Tensor) -> Tensor:
        ctx.dim, ctx.sizes = dim, [t.shape[dim] for t in tensors]
        return torch.cat(tensors, dim)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return (None, *_Split.apply(grad, ctx.dim, ctx.sizes))


class _ReLUBackward(torch.autograd.Function):
    """The backward of ReLU as a function of the output gradient alone.

    PyTorch's own double backward also returns a (zero) gradient for the
    ReLU's input, a full-size tensor of zeros; this one returns none.
    """

    @staticmethod
    def forward(ctx: Any, grad_out: Tensor, out: Tensor) -> Tensor:
        ctx.save_for_backward(out)
        return torch.ops.aten.threshold_backward(grad_out, out, 0)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0), None


class _ReLU(torch.autograd.Function):
    """``relu`` whose backward is :class:`_ReLUBackward`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return _ReLUBackward.apply(grad_out, out)


_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_BN_DEFAULTS: dict[str, Any] = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}


def _batch_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    p = {**_BN_DEFAULTS, **dict(zip(_BN_ARGS, args, strict=False)), **kwargs}
    x = p["input"]
    # Batches of one value per channel, eps <= 0 and momentum None keep PyTorch's own path.
    if not (p["training"] and x.dim() >= 2 and x.numel() > x.shape[1] and p["eps"] > 0):
        return None
    if p["momentum"] is None:
        return None
    return _BatchNormTrain.apply(
        x, p["weight"], p["bias"], p["running_mean"], p["running_var"], p["momentum"], p["eps"]
    )


def _adaptive_avg_pool(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    x = args[0] if args else kwargs["input"]
    size = args[1] if len(args) > 1 else kwargs["output_size"]
    if not (isinstance(x, Tensor) and x.dim() == 4):
        return None
    return _AdaptiveAvgPool.apply(x, size)


def _relu(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    x = args[0] if args else kwargs.get("input")
    inplace = args[1] if len(args) > 1 else kwargs.get("inplace", False)
    if inplace or not isinstance(x, Tensor):
        return None
    return _ReLU.apply(x)


def _cat(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    tensors = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if kwargs.get("out") is not None or not isinstance(dim, int) or not isinstance(tensors, list | tuple):
        return None
    if len(tensors) < 2 or not all(isinstance(t, Tensor) and t.dim() == tensors[0].dim() > 0 for t in tensors):
        return None
    return _Cat.apply(dim % tensors[0].dim(), *tensors)


class InputGradientPass:
    """Set (``active``) by :func:`~gmsearch.training.gm_loss.gm_objective` while it takes the child's input
    gradient, so :class:`HoldBatchStatistics` knows which backward pass it is in."""

    def __init__(self) -> None:
        self.active = False


class _HeldInInputGradient(torch.autograd.Function):
    """Identity whose backward passes no gradient during the input-gradient pass and all of it otherwise."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, phase: InputGradientPass) -> Tensor:
        ctx.phase = phase
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None]:
        return (None if ctx.phase.active else grad), None


class HoldBatchStatistics(TorchFunctionMode):
    """Train-mode ``F.batch_norm`` (batch statistics, running statistics updated as PyTorch does) whose
    batch mean and variance count as constants in the input-gradient pass only.

    Row i of the input gradient is then sample i's own gradient (no terms through
    the other samples' statistics), while every later derivative, the parameter
    gradients of CE and GM included, sees the statistics as the functions of the
    batch and the parameters they are: the GM stays exact for that input gradient.
    Written with composite operations (PyTorch differentiates them twice).
    """

    def __init__(self, phase: InputGradientPass) -> None:
        super().__init__()
        self.phase = phase

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.batch_norm and torch.is_grad_enabled():
            out = self._batch_norm({**_BN_DEFAULTS, **dict(zip(_BN_ARGS, args, strict=False)), **kwargs})
            if out is not None:
                return out
        return func(*args, **kwargs)

    def _batch_norm(self, p: dict[str, Any]) -> Tensor | None:
        x: Tensor = p["input"]
        if not (p["training"] and x.dim() >= 2 and x.numel() > x.shape[1]):
            return None
        momentum = p["momentum"]
        if momentum is None:
            return None
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        with torch.no_grad():  # as PyTorch's kernel: the unbiased variance goes into the running variance
            n = x.numel() // x.shape[1]
            if p["running_mean"] is not None:
                p["running_mean"].lerp_(mean.to(p["running_mean"].dtype), momentum)
            if p["running_var"] is not None:
                p["running_var"].lerp_((var * (n / (n - 1))).to(p["running_var"].dtype), momentum)
        mean = _HeldInInputGradient.apply(mean, self.phase)
        var = _HeldInInputGradient.apply(var, self.phase)
        scale = torch.rsqrt(var + p["eps"])
        if p["weight"] is not None:
            scale = scale * p["weight"]
        shift = -mean * scale
        if p["bias"] is not None:
            shift = shift + p["bias"]
        return torch.addcmul(_per_channel(shift, x), x, _per_channel(scale, x))


class CheapDoubleBackward(TorchFunctionMode):
    """During a forward pass, routes train-mode ``F.batch_norm``, ``F.adaptive_avg_pool2d``,
    ``F.relu`` and ``torch.cat`` to the functions above (same values, same exact derivatives, cheaper to
    differentiate twice); every other call, and any call they do not cover, is unchanged."""

    _ROUTES: ClassVar[dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], Tensor | None]]] = {
        F.batch_norm: _batch_norm,
        F.adaptive_avg_pool2d: _adaptive_avg_pool,
        F.relu: _relu,
        torch.cat: _cat,
    }

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        route = self._ROUTES.get(func)
        if route is not None and torch.is_grad_enabled():
            out = route(args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


