"""Adversarial sets: examples generated once from a source model and cached on disk with a checksum."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gmsearch.attacks._base import Attack, create
from gmsearch.attacks.ensemble import model_fingerprint
from gmsearch.cache import CacheError, cached_tensors, content_hash, save_tensors, tensor_digest

logger = logging.getLogger(__name__)


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
