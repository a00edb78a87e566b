"""Attacking several source models at once through one :class:`ModelEnsemble`."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmsearch.attacks._base import Attack, _check_number, create, register
from gmsearch.cache import state_digest


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
