"""Adversarial attacks as plugins, and adversarial sets generated once and cached.

Every attack is one class with its hyper-parameters in a keyword-only
constructor and one call signature, ``attack(model, x, y) -> x_adv``
(untargeted, maximising cross-entropy). Inputs are images in ``[0, 1]``;
models normalise inside themselves. The result lives on ``x``'s device:
nothing is moved or guessed. During a call the model is in eval mode and its
parameters are frozen; both are restored afterwards, and no gradient reaches
``param.grad``.

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

A new attack subclasses :class:`Attack`, stores each constructor argument as
an attribute of the same name and implements :meth:`Attack.perturb`::

    @attacks.register("fgm_l2")
    class FGML2(attacks.Attack):
        '''One L2-normalised gradient step of length eps.'''

        def perturb(self, model, x, y, start):
            g = self.input_grad(model, x, y)
            norms = g.flatten(1).norm(dim=1).clamp_min(1e-12)
            return (x + self.eps * g / norms.view(-1, *[1] * (x.dim() - 1))).clamp(0, 1)
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmsearch.cache import CacheError, cached_tensors, content_hash, save_tensors, state_digest, tensor_digest
from gmsearch.registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "FGSM",
    "MIFGSM",
    "PGDL2",
    "AdversarialSet",
    "Attack",
    "EnsembleAttack",
    "ModelEnsemble",
    "PGDLinf",
    "adversarial_set",
    "create",
    "default_budget",
    "get",
    "model_fingerprint",
    "names",
    "register",
    "registry",
]

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
    """Keyword names ``cls`` accepts, or ``None`` when it takes ``**kwargs``."""
    allowed = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind is not inspect.Parameter.VAR_POSITIONAL:
            allowed.append(p.name)
    return allowed


def create(name: str, **params: Any) -> Attack:
    """Instantiate the attack registered under ``name`` with ``params``.

    Raises:
        UnknownPluginError: ``name`` is not registered (the message lists the available names).
        TypeError: A parameter the attack does not take (the message lists the allowed ones).
        ValueError: A parameter value out of range (the message names it).
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
    return cls(**params)


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


class Attack:
    """Base class: an untargeted attack maximising cross-entropy within a budget ``eps``.

    Subclasses implement :meth:`perturb` for one chunk and, when they start
    from a random point, :meth:`start` and :attr:`stochastic`. Each
    constructor argument must be stored as an attribute of the same name so
    :meth:`params` (cache keys, printing) finds it.

    Args:
        eps: Perturbation budget (its norm is up to the attack).
        batch_size: Images attacked at once; changes memory use, not the result.
        seed: Seeds the random start (a ``torch.Generator`` on the input device).
    """

    #: Registry name; set by :func:`register`.
    name: ClassVar[str] = ""

    def __init__(self, *, eps: float, batch_size: int = 512, seed: int = 0) -> None:
        self.eps = _check_number("eps", eps)
        self.batch_size = _check_int("batch_size", batch_size, low=1)
        self.seed = _check_int("seed", seed, low=0)

    # ---- what subclasses implement

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor) -> Tensor:
        """Adversarial version of one chunk ``x`` (model in eval mode, gradients enabled).

        Args:
            model: The model under attack, frozen.
            x: Clean images of the chunk, in ``[0, 1]``.
            y: Their true labels.
            start: Where to start (``x`` itself unless :meth:`start` says otherwise).

        Returns:
            Images of ``x``'s shape and device in ``[0, 1]``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement perturb(model, x, y, start)")

    @property
    def stochastic(self) -> bool:
        """Whether the result depends on ``seed`` (a random start)."""
        return False

    def start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Starting points for the whole batch (drawn once, so chunking never changes them)."""
        return x

    # ---- shared machinery

    def input_grad(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Gradient of the summed cross-entropy w.r.t. ``x`` only (parameters are frozen)."""
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
        with _frozen_eval(model):
            start = x
            if self.stochastic:
                generator = torch.Generator(device=x.device)
                generator.manual_seed(self.seed)
                start = self.start(x, generator)
            out = torch.empty_like(x)
            for lo in range(0, x.shape[0], self.batch_size):
                hi = lo + self.batch_size
                out[lo:hi] = self.perturb(model, x[lo:hi], y[lo:hi], start[lo:hi])
        return out

    def params(self) -> dict[str, Any]:
        """Hyper-parameters by constructor name (``seed`` included, ``batch_size`` not)."""
        out: dict[str, Any] = {}
        for p in list(inspect.signature(type(self).__init__).parameters.values())[1:]:
            if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            if p.name in _NOT_HYPER_PARAMETERS:
                continue
            if not hasattr(self, p.name):
                raise TypeError(
                    f"{type(self).__name__} must store constructor argument {p.name!r} as "
                    f"self.{p.name} (or override params())"
                )
            out[p.name] = getattr(self, p.name)
        return out

    def describe(self) -> str:
        """One line naming the attack and its budget, e.g. ``pgd_linf(eps=0.2, ...)``."""
        shown = {k: v for k, v in self.params().items() if k != "seed" or self.stochastic}
        inner = ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        return f"{self.name or type(self).__name__}({inner})"

    def __repr__(self) -> str:
        return self.describe()


# --------------------------------------------------------------------------- built-ins


@register("fgsm")
class FGSM(Attack):
    """Fast gradient sign method, one L-inf step of size eps (Goodfellow et al. 2015).

    Args:
        eps: L-inf budget.
        batch_size: Images attacked at once.
        seed: Unused (deterministic); kept for a uniform signature.
    """

    def __init__(self, *, eps: float = 8 / 255, batch_size: int = 512, seed: int = 0) -> None:
        super().__init__(eps=eps, batch_size=batch_size, seed=seed)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor) -> Tensor:
        """One signed-gradient step from ``x``, clamped to ``[0, 1]``."""
        grad = self.input_grad(model, x, y)
        return torch.clamp(x + self.eps * grad.sign(), min=0, max=1)


@register("pgd_linf")
class PGDLinf(Attack):
    """Projected gradient descent in the L-inf ball (Madry et al. 2018).

    Matches ``torchattacks.PGD`` update for update (with ``random_start=False``
    exactly; with a random start the draw comes from this attack's seeded
    generator on the input device).

    Args:
        eps: L-inf budget. Default 8/255 (RGB, Madry et al.); grey digit sets
            need more, see :func:`default_budget`.
        alpha: Step size.
        steps: Number of steps.
        random_start: Start from a uniform point in the eps-ball.
        batch_size: Images attacked at once.
        seed: Seeds the random start.
    """

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        random_start: bool = True,
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, batch_size=batch_size, seed=seed)
        self.alpha = _check_number("alpha", alpha, strict=True)
        self.steps = _check_int("steps", steps, low=0)
        self.random_start = _check_bool("random_start", random_start)

    @property
    def stochastic(self) -> bool:
        """True when starting from a random point."""
        return self.random_start

    def start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A uniform point in the L-inf eps-ball around ``x``, clamped to ``[0, 1]``."""
        noise = torch.empty_like(x).uniform_(-self.eps, self.eps, generator=generator)
        return torch.clamp(x + noise, min=0, max=1)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor) -> Tensor:
        """``steps`` signed-gradient steps, each projected to the eps-ball and ``[0, 1]``."""
        adv = start
        for _ in range(self.steps):
            grad = self.input_grad(model, adv, y)
            adv = adv.detach() + self.alpha * grad.sign()
            delta = torch.clamp(adv - x, min=-self.eps, max=self.eps)
            adv = torch.clamp(x + delta, min=0, max=1)
        return adv.detach()


@register("pgd_l2")
class PGDL2(Attack):
    """Projected gradient descent in the L2 ball (Madry et al. 2018).

    Matches ``torchattacks.PGDL2`` (gradient norms offset by 1e-10, the
    perturbation rescaled onto the ball, then clamped to ``[0, 1]``).

    Args:
        eps: L2 budget per image.
        alpha: Step length (L2).
        steps: Number of steps.
        random_start: Start from a random point in the eps-ball.
        batch_size: Images attacked at once.
        seed: Seeds the random start.
    """

    #: Added to gradient norms before dividing (as torchattacks).
    eps_for_division: ClassVar[float] = 1e-10

    def __init__(
        self,
        *,
        eps: float = 1.0,
        alpha: float = 0.2,
        steps: int = 10,
        random_start: bool = True,
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, batch_size=batch_size, seed=seed)
        self.alpha = _check_number("alpha", alpha, strict=True)
        self.steps = _check_int("steps", steps, low=0)
        self.random_start = _check_bool("random_start", random_start)

    @property
    def stochastic(self) -> bool:
        """True when starting from a random point."""
        return self.random_start

    def start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A random direction scaled to a uniform radius in ``[0, eps]`` (as torchattacks)."""
        delta = torch.empty_like(x).normal_(generator=generator)
        norms = _per_sample(delta.flatten(1).norm(p=2, dim=1), x)
        radius = torch.empty_like(norms).uniform_(0, 1, generator=generator)
        return torch.clamp(x + delta * (radius / norms * self.eps), min=0, max=1)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor) -> Tensor:
        """``steps`` normalised-gradient steps, each projected to the L2 ball and ``[0, 1]``."""
        adv = start
        for _ in range(self.steps):
            grad = self.input_grad(model, adv, y)
            grad_norms = grad.flatten(1).norm(p=2, dim=1) + self.eps_for_division
            adv = adv.detach() + self.alpha * (grad / _per_sample(grad_norms, grad))
            delta = adv - x
            delta_norms = delta.flatten(1).norm(p=2, dim=1)
            factor = torch.clamp(self.eps / delta_norms, max=1.0)  # eps / 0 = inf -> 1
            adv = torch.clamp(x + delta * _per_sample(factor, delta), min=0, max=1)
        return adv.detach()


@register("mi_fgsm")
class MIFGSM(Attack):
    """Momentum iterative FGSM, for transferable examples (Dong et al. 2018).

    Matches ``torchattacks.MIFGSM``: each gradient is divided by its mean
    absolute value per image and added to the decayed momentum, whose sign
    drives an L-inf step. (A zero gradient gives a zero step here rather
    than NaN.)

    Args:
        eps: L-inf budget.
        alpha: Step size.
        steps: Number of steps.
        decay: Momentum decay factor mu.
        batch_size: Images attacked at once.
        seed: Unused (deterministic); kept for a uniform signature.
    """

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        decay: float = 1.0,
        batch_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__(eps=eps, batch_size=batch_size, seed=seed)
        self.alpha = _check_number("alpha", alpha, strict=True)
        self.steps = _check_int("steps", steps, low=0)
        self.decay = _check_number("decay", decay)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor) -> Tensor:
        """``steps`` momentum steps, each projected to the eps-ball and ``[0, 1]``."""
        dims = tuple(range(1, x.dim()))
        momentum = torch.zeros_like(x)
        tiny = torch.finfo(x.dtype).tiny
        adv = start
        for _ in range(self.steps):
            grad = self.input_grad(model, adv, y)
            grad = grad / torch.mean(torch.abs(grad), dim=dims, keepdim=True).clamp_min(tiny)
            momentum = grad + momentum * self.decay
            adv = adv.detach() + self.alpha * momentum.sign()
            delta = torch.clamp(adv - x, min=-self.eps, max=self.eps)
            adv = torch.clamp(x + delta, min=0, max=1)
        return adv.detach()


# --------------------------------------------------------------------------- ensembles


def model_fingerprint(model: nn.Module) -> str:
    """``ClassName@digest``: a model's class, structure (its repr) and weights/buffers.

    Two models share a fingerprint only if they print the same and hold the
    same state, so it identifies the source of an adversarial set.
    """
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}|".encode())
    h.update(repr(model).encode())
    state = model.state_dict()
    # Shapes hashed apart, values flattened: 0-d buffers (BatchNorm's step count) can't be viewed as bytes.
    h.update(repr([(k, v.dtype, tuple(v.shape)) for k, v in sorted(state.items())]).encode())
    h.update(state_digest({k: v.reshape(-1) for k, v in state.items()}).encode())
    return f"{type(model).__qualname__}@{h.hexdigest()[:16]}"


class ModelEnsemble(nn.Module):
    """Several classifiers as one: any attack run against it attacks them all at once.

    ``combine="logits"`` averages the members' logits (Dong et al. 2018 found
    this fusion the strongest for transfer); ``combine="probs"`` returns the
    log of the averaged softmax probabilities (Liu et al. 2017), so
    cross-entropy on the output is ``-log(mean_i p_i(y|x))``.

    Args:
        models: The member classifiers (all on one device).
        combine: ``"logits"`` or ``"probs"``.
        weights: Non-negative member weights, normalised to sum to one; default equal.

    Example:
        >>> import torch
        >>> a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
        >>> ModelEnsemble([a, b])(torch.rand(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        *,
        combine: Literal["logits", "probs"] = "logits",
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        members = list(models)
        if not members or not all(isinstance(m, nn.Module) for m in members):
            raise ValueError(f"models must be a non-empty sequence of nn.Module, got {models!r}")
        if combine not in ("logits", "probs"):
            raise ValueError(f"combine must be 'logits' or 'probs', got {combine!r}")
        raw = [1.0] * len(members) if weights is None else list(weights)
        if len(raw) != len(members):
            raise ValueError(f"weights must have one value per model ({len(members)}), got {len(raw)}")
        for i, w in enumerate(raw):
            _check_number(f"weights[{i}]", w)
        if sum(raw) <= 0:
            raise ValueError(f"weights must not all be zero, got {raw!r}")
        self.members = nn.ModuleList(members)
        self.combine = combine
        self.weights = tuple(float(w) / sum(raw) for w in raw)

    def forward(self, x: Tensor) -> Tensor:
        """Combined logits (or log mean probabilities) of the members."""
        outs = [m(x) for m in self.members]
        if self.combine == "logits":
            return sum((w * o for w, o in zip(self.weights, outs, strict=True)), torch.zeros_like(outs[0]))
        logs = torch.stack(
            [F.log_softmax(o, dim=-1) + math.log(w) for w, o in zip(self.weights, outs, strict=True) if w > 0]
        )
        return torch.logsumexp(logs, dim=0)

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}, weights={self.weights}"


@register("ensemble")
class EnsembleAttack(Attack):
    """Attack several source models at once: ``attack`` against their :class:`ModelEnsemble`.

    ``ensemble(model, x, y)`` attacks ``ModelEnsemble([model, *models])``; the
    first argument may also be a sequence of models (then ``models`` are
    appended to it). The budget, steps and seed are the inner attack's.

    Args:
        attack: The inner attack, an instance or a registered name.
        attack_params: Parameters for ``attack`` when it is given by name.
        models: Extra source models attacked together with the one passed at call time.
        combine: ``"logits"`` (average logits) or ``"probs"`` (average probabilities).
        weights: One weight per member, call-time model(s) first; default equal.

    Example:
        >>> import torch
        >>> a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
        >>> ens = EnsembleAttack(attack="fgsm", attack_params={"eps": 0.1})
        >>> ens([a, b], torch.rand(2, 4), torch.tensor([0, 1])).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        *,
        attack: Attack | str = "pgd_linf",
        attack_params: Mapping[str, Any] | None = None,
        models: Sequence[nn.Module] = (),
        combine: Literal["logits", "probs"] = "logits",
        weights: Sequence[float] | None = None,
    ) -> None:
        if isinstance(attack, Attack):
            if attack_params:
                raise ValueError("attack_params only apply when attack is given by name")
            inner = attack
        elif isinstance(attack, str):
            inner = create(attack, **dict(attack_params or {}))
        else:
            raise ValueError(f"attack must be an Attack or a registered name, got {attack!r}")
        if isinstance(inner, EnsembleAttack):
            raise ValueError("an ensemble attack cannot wrap another ensemble attack")
        if combine not in ("logits", "probs"):
            raise ValueError(f"combine must be 'logits' or 'probs', got {combine!r}")
        super().__init__(eps=inner.eps, batch_size=inner.batch_size, seed=inner.seed)
        self.attack = inner
        self.models = tuple(models)
        if not all(isinstance(m, nn.Module) for m in self.models):
            raise ValueError(f"models must be nn.Module instances, got {models!r}")
        self.combine = combine
        self.weights = None if weights is None else tuple(float(w) for w in weights)

    @property
    def stochastic(self) -> bool:
        """Whether the inner attack is."""
        return self.attack.stochastic

    def ensemble(self, model: nn.Module | Sequence[nn.Module]) -> ModelEnsemble:
        """The ensemble attacked for call-time ``model`` (one module or several)."""
        first = [model] if isinstance(model, nn.Module) and not isinstance(model, nn.ModuleList) else model
        return ModelEnsemble([*first, *self.models], combine=self.combine, weights=self.weights)

    def __call__(  # also accepts a sequence of models
        self, model: nn.Module | Sequence[nn.Module], x: Tensor, y: Tensor
    ) -> Tensor:
        """Adversarial examples against the ensemble of ``model`` and ``models``."""
        return self.attack(self.ensemble(model), x, y)

    def params(self) -> dict[str, Any]:
        """The inner attack and its parameters, the extra models' fingerprints, the fusion."""
        return {
            "attack": self.attack.name or type(self.attack).__name__,
            "attack_params": self.attack.params(),
            "models": [model_fingerprint(m) for m in self.models],
            "combine": self.combine,
            "weights": None if self.weights is None else list(self.weights),
        }

    def describe(self) -> str:
        """E.g. ``ensemble(pgd_linf(eps=0.2, ...), +2 models, combine='logits')``."""
        extra = f", +{len(self.models)} models" if self.models else ""
        weights = f", weights={list(self.weights)}" if self.weights is not None else ""
        return f"{self.name}({self.attack.describe()}{extra}, combine={self.combine!r}{weights})"


# --------------------------------------------------------------------------- budgets


def default_budget(name: str, *, in_channels: int) -> dict[str, Any]:
    """Default budget for attack ``name`` on images with ``in_channels`` channels.

    RGB sets get Madry et al.'s L-inf PGD budget (eps 8/255, step 2/255, 10
    steps). Grey digit sets need more: measured on digits at 16x16 with a
    hand_a-like reference (see DESIGN.md, "Attack budgets that discriminate"),
    L-inf eps 0.1 leaves an independently trained copy of the reference at
    47% and a GM-trained copy at the 99.7% ceiling, while eps 0.2 (step
    eps/4) gives 1% and 90%, so 0.2 is the grey default. L2 budgets are the
    usual ones from the literature (0.5 for CIFAR-10, 2.0 for MNIST), not
    measured here.

    Returns:
        Keyword arguments for :func:`create` (``{}`` for attacks without a default).
    """
    grey = _check_int("in_channels", in_channels, low=1) == 1
    linf: dict[str, Any] = (
        {"eps": 0.2, "alpha": 0.05, "steps": 10} if grey else {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10}
    )
    budgets: dict[str, dict[str, Any]] = {
        "pgd_linf": linf,
        "mi_fgsm": linf,
        "fgsm": {"eps": linf["eps"]},
        "pgd_l2": (
            {"eps": 2.0, "alpha": 0.5, "steps": 10} if grey else {"eps": 0.5, "alpha": 0.125, "steps": 10}
        ),
    }
    get(name)  # unknown names fail with the list of available ones
    return dict(budgets.get(name, {}))


# --------------------------------------------------------------------------- adversarial sets


@dataclass(frozen=True)
class AdversarialSet:
    """Adversarial images generated once from a source model, with their true labels.

    Attributes:
        x: Adversarial images, same shape as the clean split's ``x``.
        y: True labels.
        attack: The attack and budget that made them (``Attack.describe()``).
        source: The source model's fingerprint (``ClassName@digest``).
    """

    x: Tensor
    y: Tensor
    attack: str
    source: str

    def to(self, device: torch.device | str) -> AdversarialSet:
        """A copy with ``x`` and ``y`` on ``device``."""
        return AdversarialSet(
            x=self.x.to(device), y=self.y.to(device), attack=self.attack, source=self.source
        )

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _check_split(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError(
            "x must be a 4-D float tensor (N, C, H, W) of images in [0, 1], got "
            + (f"dtype {x.dtype} and shape {tuple(x.shape)}" if isinstance(x, Tensor) else repr(type(x)))
        )
    if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must be a 1-D int64 tensor with one label per image ({x.shape[0]}), got "
            + (f"dtype {y.dtype} and shape {tuple(y.shape)}" if isinstance(y, Tensor) else repr(type(y)))
        )
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError(
            f"x must lie in [0, 1] (normalisation belongs inside the model), got values in "
            f"[{x.min().item():.4g}, {x.max().item():.4g}] (NaN counts as outside)"
        )


def adversarial_set(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: Attack | str,
    *,
    cache_dir: Path | str | None = None,
    attack_params: Mapping[str, Any] | None = None,
    tag: str = "",
) -> AdversarialSet:
    """Adversarial examples of ``(x, y)`` against ``model``, generated once and cached.

    The cache file name hashes everything the result depends on: the
    model's fingerprint (class, structure, weights and buffers), the digests
    of ``x`` and ``y``, the attack's name and parameters (seed included) and
    ``tag``. A file that is corrupt, fails its checksum, was written for other
    inputs or holds tensors of the wrong shape is logged at WARNING with its
    path and regenerated, never used.

    Args:
        model: The source model (for several, a :class:`ModelEnsemble` or the ``ensemble`` attack).
        x: Clean images (N, C, H, W) in ``[0, 1]``, on the model's device.
        y: True labels (N,) int64.
        attack: An :class:`Attack` or a registered name.
        cache_dir: Folder for the cache file; ``None`` computes without caching.
        attack_params: Parameters for ``attack`` when it is given by name.
        tag: Free text added to the key and file name (e.g. the split's name).

    Returns:
        The set, with ``x`` and ``y`` on ``x``'s device.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> adv = adversarial_set(model, torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long),
        ...                       "fgsm", attack_params={"eps": 0.1})
        >>> adv.attack, adv.x.shape
        ('fgsm(eps=0.1)', torch.Size([8, 1, 8, 8]))
    """
    if isinstance(attack, Attack):
        if attack_params:
            raise ValueError("attack_params only apply when attack is given by name")
        atk = attack
    else:
        atk = create(attack, **dict(attack_params or {}))
    _check_split(x, y)
    if not isinstance(tag, str):
        raise ValueError(f"tag must be a string, got {tag!r}")
    source = model_fingerprint(model)
    description = atk.describe()

    def generate() -> dict[str, Tensor]:
        return {"x": atk(model, x, y)}

    if cache_dir is None:
        return AdversarialSet(x=generate()["x"], y=y, attack=description, source=source)

    meta = {
        "kind": "adversarial_set",
        "source": source,
        "x": tensor_digest(x),
        "y": tensor_digest(y),
        "attack": atk.name or type(atk).__name__,
        "attack_params": atk.params(),
        "tag": tag,
    }
    key = content_hash(meta)
    label = "".join(c if c.isalnum() or c in "-_" else "_" for c in tag)
    path = Path(cache_dir) / f"adv-{meta['attack']}{'-' + label if label else ''}-{key}.pt"
    what = f"adversarial set {description} from {source}"
    tensors = cached_tensors(path, meta, generate, what=what)
    x_adv = tensors.get("x")
    if x_adv is None or x_adv.shape != x.shape or x_adv.dtype != x.dtype:
        got = "no 'x'" if x_adv is None else f"{x_adv.dtype} {tuple(x_adv.shape)}"
        logger.warning(
            "%s: %s", what,
            CacheError(f"cache file {path} holds {got}, expected {x.dtype} {tuple(x.shape)}; regenerating"),
        )
        tensors = generate()
        save_tensors(path, tensors, meta)
        x_adv = tensors["x"]
    return AdversarialSet(x=x_adv.to(x.device), y=y, attack=description, source=source)
