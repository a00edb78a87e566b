"""Adversarial attacks as plugins, and adversarial sets generated once and cached.

Every attack is one class with its hyper-parameters in a keyword-only
constructor and one call signature, ``attack(model, x, y) -> x_adv``
(untargeted, maximising cross-entropy). Inputs are images in ``[0, 1]``;
models normalise inside themselves. The result lives on ``x``'s device:
nothing is moved or guessed. During a call the model is in eval mode and its
parameters are frozen; both are restored afterwards, and no gradient reaches
``param.grad``. What :meth:`Attack.perturb` returns is checked (the chunk's
shape, dtype and device; the whole result in ``[0, 1]`` once per call), and a
budget that covers the whole image space (an L-inf ``eps >= 1``, an L2 ``eps``
at least the images' diameter) is refused: the error names the attack and the rule.

Built-ins match torchattacks (``PGD(random_start=False)``, ``PGDL2``,
``FGSM``, ``MIFGSM``) update for update. One deliberate difference: the loss
is summed over the batch rather than averaged, so each image's gradient is
independent of the batch it is processed in and chunking (``batch_size``)
does not change the result. Every built-in step is invariant to that scale
(sign, L2 normalisation, MI-FGSM's L1 normalisation) up to rounding.

Example:
    >>> import torch
    >>> from gmsearch import attacks
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    >>> attack = attacks.create("pgd_linf", eps=0.2, alpha=0.05, steps=10)
    >>> x_adv = attack(model, x, y)
    >>> bool((x_adv - x).abs().max() <= 0.2 + 1e-6)
    True
    >>> attack.describe()
    'pgd_linf(eps=0.2, alpha=0.05, steps=10, random_start=True, seed=0)'

A new attack subclasses :class:`Attack` (or a built-in), declares its own
hyper-parameters as annotated fields (the parent's are inherited) and
implements :meth:`Attack.perturb`::

    @attacks.register("fgm_l2")
    class FGML2(attacks.Attack):
        '''One L2-normalised gradient step of length eps.'''

        def perturb(self, model, x, y, start, generator):
            g = self.input_grad(model, x, y, generator)
            norms = g.flatten(1).norm(dim=1).clamp_min(1e-12)
            return (x + self.eps * g / norms.view(-1, *[1] * (x.dim() - 1))).clamp(0, 1)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar, dataclass_transform

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmsearch import interrupt
from gmsearch.registry import PluginError, Registry, start_plugin

#: All attacks, by name. ``gmsearch plugins`` lists it.
registry = Registry[type["Attack"]]("attack")

A = TypeVar("A", bound=type["Attack"])

#: Constructor arguments that change memory use or speed but never the result.
_NOT_HYPER_PARAMETERS = frozenset({"batch_size"})


def register(name: str, *, description: str | None = None, replace: bool = False) -> Callable[[A], A]:
    """Class decorator registering an :class:`Attack` subclass under ``name``.

    The class's ``name`` attribute is set to ``name`` unless the class body
    defines one itself.

    Args:
        name: The name users pass to :func:`create` and configs.
        description: One line for ``gmsearch plugins``; default: first docstring line.
        replace: Allow replacing another attack registered under ``name``.

    Raises:
        TypeError: The decorated object is not an :class:`Attack` subclass.
        ValueError: ``name`` is empty, or taken and ``replace`` is False.
    """
    add = registry.register(name, description=description, replace=replace)

    def decorator(cls: A) -> A:
        if not (isinstance(cls, type) and issubclass(cls, Attack)):
            raise TypeError(f"@attacks.register({name!r}) expects an Attack subclass, got {cls!r}")
        if not cls.__dict__.get("name"):
            cls.name = name
        add(cls)
        return cls

    return decorator


def get(name: str) -> type[Attack]:
    """The attack class registered under ``name`` (unknown names list the available ones)."""
    return registry.get(name)


def names() -> list[str]:
    """Names of all registered attacks, sorted."""
    return registry.names()


def constructor_params(cls: type[Attack]) -> list[str] | None:
    """Keyword names ``cls`` accepts (the common ``batch_size`` and ``seed`` last), or ``None`` for ``**kwargs``."""
    allowed = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind is not inspect.Parameter.VAR_POSITIONAL:
            allowed.append(p.name)
    return sorted(allowed, key=lambda name: name in ("batch_size", "seed"))


def create(name: str, **params: Any) -> Attack:
    """Instantiate the attack registered under ``name`` with ``params``.

    Raises:
        UnknownPluginError: ``name`` is not registered (the message lists the available names).
        TypeError: A parameter the attack does not take (the message lists the allowed ones).
        PluginError: A parameter value out of range, or any other error of the attack's
            constructor (a ``ValueError`` and ``TypeError``; the message names the attack).
    """
    cls = get(name)
    allowed = constructor_params(cls)
    if allowed is not None:
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise TypeError(
                f"attack {name!r} has no parameter(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(allowed)}"
            )
    return start_plugin("attack", name, cls, params)


# --------------------------------------------------------------------------- validation


def _check_number(name: str, value: Any, *, low: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (strict and value == low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _check_inputs(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """Raise a clear error for inputs an attack cannot use; one host sync for the range."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if not x.is_floating_point() or x.dim() < 2:
        raise ValueError(
            f"x must be a floating-point batch (N, ...) of images in [0, 1], "
            f"got dtype {x.dtype} and shape {tuple(x.shape)}"
        )
    if y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must be 1-D int64 class labels with one per image ({x.shape[0]}), "
            f"got dtype {y.dtype} and shape {tuple(y.shape)}"
        )
    if y.device != x.device:
        raise ValueError(f"x is on {x.device} but y is on {y.device}; put them on one device")
    for p in model.parameters():  # don't guess a device: refuse a mismatch
        if p.device != x.device:
            raise ValueError(f"model is on {p.device} but x is on {x.device}; move one of them")
        break
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError(
            f"x must lie in [0, 1] (models normalise inside), got values in "
            f"[{x.min().item():.4g}, {x.max().item():.4g}] (NaN counts as outside)"
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return format(value, ".6g")
    return repr(value) if isinstance(value, str) else str(value)


@contextmanager
def _frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration; every flag restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, training in modes:
            m.training = training


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector (N,) to broadcast against ``like`` (N, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


# --------------------------------------------------------------------------- base class


@dataclass_transform(kw_only_default=True, eq_default=False)
@dataclass(kw_only=True, eq=False, repr=False)
class Attack:
    """Base class: an untargeted attack maximising cross-entropy within a budget ``eps``.

    Hyper-parameters are annotated class fields: every subclass is made a
    keyword-only dataclass, so it inherits its parent's hyper-parameters and
    declares only its own (validated in ``__post_init__``, which calls
    ``super().__post_init__()``). Subclasses implement :meth:`perturb` for one
    chunk and, when they start from a random point, :meth:`start` and
    :attr:`stochastic`.

    Args:
        eps: Perturbation budget (its norm is up to the attack).
        batch_size: Images attacked at once; changes memory use, not the result.
        seed: Seeds the attack's ``torch.Generator`` (on the input device), which
            draws the random start and is passed to :meth:`perturb`.
    """

    #: Registry name; set by :func:`register`.
    name: ClassVar[str] = ""
    #: The norm ``eps`` is measured in: ``"linf"`` or ``"l2"`` (its largest useful value is then
    #: checked), or None (not checked).
    norm: ClassVar[str | None] = None

    eps: float
    batch_size: int = 512
    seed: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclass(kw_only=True, eq=False, repr=False)(cls)  # in place: fields, __init__

    def __post_init__(self) -> None:
        self.eps = _check_number("eps", self.eps)
        self.batch_size = _check_int("batch_size", self.batch_size, low=1)
        self.seed = _check_int("seed", self.seed, low=0)
        if self.norm == "linf" and self.eps >= 1.0:
            raise ValueError(
                f"eps {self.eps:g} is an L-inf budget on images in [0, 1]: it must be < 1 (1 allows any image); "
                "usual values are 8/255 for colour images and 0.1-0.3 for grey digits"
            )

    def check_budget(self, input_shape: tuple[int, ...]) -> None:
        """Refuse an L2 ``eps`` at least the diameter of the images ``[0, 1]^input_shape`` (any image is then
        reachable); :class:`~gmsearch.registry.PluginError` naming the attack."""
        diameter = math.sqrt(math.prod(input_shape))
        if self.norm == "l2" and self.eps >= diameter:
            raise PluginError(
                f"attack {self.name or type(self).__name__!r}: eps {self.eps:g} is an L2 budget; images of shape "
                f"{tuple(input_shape)} in [0, 1] are at most sqrt({math.prod(input_shape)}) = {diameter:.4g} "
                "apart, so it must be smaller than that"
            )

    def _check_output(self, adv: Any, x: Tensor) -> Tensor:
        """What :meth:`perturb` returned for chunk ``x``: a tensor of its shape, dtype and device."""
        got = (
            (tuple(adv.shape), adv.dtype, adv.device) if isinstance(adv, Tensor) else None
        )
        if got != (tuple(x.shape), x.dtype, x.device):
            shown = (
                f"shape {got[0]}, dtype {got[1]} on {got[2]}" if got is not None else f"a {type(adv).__name__}"
            )
            raise PluginError(
                f"attack {self.name or type(self).__name__!r}: perturb returned {shown} for a chunk of shape "
                f"{tuple(x.shape)}, dtype {x.dtype} on {x.device}; it must return images of the chunk's shape, "
                "dtype and device, in [0, 1]"
            )
        return adv

    # ---- what subclasses implement

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, generator: torch.Generator) -> Tensor:
        """Adversarial version of one chunk ``x`` (model in eval mode, gradients enabled).

        Args:
            model: The model under attack, frozen.
            x: Clean images of the chunk, in ``[0, 1]``.
            y: Their true labels.
            start: Where to start (``x`` itself unless :meth:`start` says otherwise).
            generator: The attack's random stream for this call (seeded with ``seed``),
                for attacks that draw at every step.

        Returns:
            Images of ``x``'s shape and device in ``[0, 1]``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement perturb(model, x, y, start, generator)")

    @property
    def stochastic(self) -> bool:
        """Whether the result depends on ``seed`` (a random start)."""
        return False

    def start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Starting points for the whole batch (drawn once, so chunking never changes them)."""
        return x

    # ---- shared machinery

    def input_grad(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Gradient of the summed cross-entropy w.r.t. ``x`` only (parameters are frozen).

        The built-in attacks take every step's gradient here, so a subclass that
        changes how a gradient is taken (e.g. on a randomly transformed input,
        drawing from ``generator``) overrides only this.
        """
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        return grad

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial examples for ``model`` from clean ``x`` with true labels ``y``.

        Args:
            model: A classifier returning logits; it normalises its own inputs.
            x: Images (N, C, H, W) or (N, ...), floating point, in ``[0, 1]``, on the model's device.
            y: Labels (N,) int64 on the same device.

        Returns:
            Detached adversarial images, same shape, dtype and device as ``x``.
        """
        _check_inputs(model, x, y)
        if x.is_inference():
            x = x.clone()
        x = x.detach()
        if x.shape[0] == 0:
            return x.clone()
        self.check_budget(tuple(x.shape[1:]))
        with _frozen_eval(model):
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
            start = self.start(x, generator) if self.stochastic else x
            out = torch.empty_like(x)
            for lo in range(0, x.shape[0], self.batch_size):
                interrupt.check()
                hi = lo + self.batch_size
                chunk = x[lo:hi]
                out[lo:hi] = self._check_output(self.perturb(model, chunk, y[lo:hi], start[lo:hi], generator), chunk)
        if not bool(((out >= 0) & (out <= 1)).all()):  # once per call: one host sync
            raise PluginError(
                f"attack {self.name or type(self).__name__!r}: perturb returned values in "
                f"[{out.min().item():.4g}, {out.max().item():.4g}] (NaN counts as outside); adversarial images "
                "must lie in [0, 1] (clamp them)"
            )
        return out

    def params(self) -> dict[str, Any]:
        """Hyper-parameters by name, ``seed`` last (``batch_size`` left out: it never changes the result)."""
        names = sorted((f.name for f in fields(self) if f.name not in _NOT_HYPER_PARAMETERS), key=lambda n: n == "seed")
        return {name: getattr(self, name) for name in names}

    def describe(self) -> str:
        """One line naming the attack and its budget, e.g. ``pgd_linf(eps=0.2, ...)``."""
        shown = {k: v for k, v in self.params().items() if k != "seed" or self.stochastic}
        inner = ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        return f"{self.name or type(self).__name__}({inner})"

    def __repr__(self) -> str:
        return self.describe()
