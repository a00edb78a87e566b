"""The reference zoo: frozen, trained networks whose adversarial examples must not transfer.

``get(name, data)`` trains a reference once with a standard recipe (Adam with
PyTorch defaults, batch 128, plain cross-entropy), caches its weights by a hash
of (architecture, dataset, recipe, seed), and returns it frozen. Names come
from :mod:`gmsearch.architectures` (torchvision networks adapted to small
images, plus the paper's hand-engineered ``hand_a`` / ``hand_b``). A user can
pass any ``nn.Module`` or a checkpoint path instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gmsearch import cache
from gmsearch.data._loaders import Dataset
from gmsearch.evaluation import accuracy
from gmsearch.nets import architectures, zoo
from gmsearch.nets.builder import build
from gmsearch.training.loop import numerics, resolve_device, train

logger = logging.getLogger(__name__)

#: The cached reference's record of what trained it (:func:`gmsearch.training.loop.numerics`, UTF-8 bytes).
TRAINED_WITH = "trained_with"


def _register_genome_architecture(name: str) -> None:
    def factory(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return build(zoo.genome(name), in_channels=in_channels, num_classes=num_classes, image_size=image_size)

    factory.__doc__ = f"The paper's hand-engineered network {name!r} (Appendix A), built from its genome."
    factory.__qualname__ = f"genome_architecture_{name}"
    if name not in architectures.registry:
        architectures.register(name)(factory)


for _name in zoo.names():
    _register_genome_architecture(_name)


class FrozenReference(nn.Module):
    """A reference network: always in eval mode, parameters frozen.

    Attributes:
        name: Architecture name or a description of where it came from.
        clean_acc: Test accuracy measured when it was trained or loaded.
    """

    def __init__(self, model: nn.Module, *, name: str, clean_acc: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.clean_acc = clean_acc
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def train(self, mode: bool = True) -> FrozenReference:
        """A reference never trains: stays in eval mode whatever ``mode`` says."""
        return super().train(False)


def _image_size(data: Dataset) -> int:
    _, h, w = data.input_shape
    return h if h == w else min(h, w)


def build_architecture(name: str, data: Dataset) -> nn.Module:
    """A fresh (untrained) network of architecture ``name`` shaped for ``data``."""
    channels, _, _ = data.input_shape
    factory = architectures.get(name)
    return factory(channels, data.num_classes, _image_size(data))


def load_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``path``, loaded with ``weights_only=True``.

    Accepts a plain state dict or gmsearch's own format (a dict with a
    ``state_dict`` entry). Anything that is not plain tensors is rejected.
    """
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"checkpoint {path} cannot be loaded as plain tensors (weights_only=True): {exc}"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path} is not a state dict (a mapping of names to tensors)")
    return obj


def _cache_entry(
    name: str, data: Dataset, *, epochs: int, batch_size: int, lr: float | None, seed: int,
    cache_dir: str | Path | None,
) -> tuple[Path, dict[str, Any]]:
    architectures.get(name)  # unknown name: error listing the available ones
    recipe: dict[str, Any] = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": "adam"}
    meta = {"what": "reference", "arch": name, "data": data.fingerprint(), "recipe": recipe, "seed": seed}
    root = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
    return root / "references" / f"{name}-{cache.content_hash(meta)}.pt", meta


def cached_file(
    name: str, data: Dataset, *, epochs: int = 30, batch_size: int = 128, lr: float | None = None, seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Path | None:
    """The cached weights :func:`get` would load for architecture ``name`` (None: it would train)."""
    file, _ = _cache_entry(name, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, cache_dir=cache_dir)
    return file if file.is_file() else None


def get(
    reference: str | nn.Module | Path,
    data: Dataset,
    *,
    arch: str | None = None,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> FrozenReference:
    """A frozen, trained reference network for ``data``.

    Args:
        reference: An architecture name (see ``gmsearch.architectures.names()``),
            an ``nn.Module`` (used as is, frozen), or a checkpoint path (with
            ``arch`` naming its architecture).
        data: The dataset the reference is trained and measured on.
        arch: Architecture of a checkpoint given as ``reference``.
        epochs: Training epochs of the standard recipe.
        batch_size: Training batch size.
        lr: Adam learning rate (None: PyTorch's default).
        seed: Fixes initialisation and batch order.
        device: Where the reference lives.
        cache_dir: Weight cache (default ``~/.cache/gmsearch`` or ``$GMSEARCH_CACHE``).
        progress: Where the training lines go (one per epoch); default: this module's logger at INFO.

    Returns:
        A :class:`FrozenReference` with ``clean_acc`` measured on ``data.test``.
    """
    dev = resolve_device(device)
    test_x, test_y = data.test.x.to(dev), data.test.y.to(dev)
    if isinstance(reference, nn.Module):
        model = reference.to(dev)
        name = type(reference).__name__
        frozen = FrozenReference(model, name=name)
        frozen.clean_acc = accuracy(frozen, test_x, test_y)
        return frozen
    path = Path(reference)
    if isinstance(reference, Path) or (path.suffix in {".pt", ".pth"} and path.exists()):
        if arch is None:
            raise ValueError(f"reference checkpoint {path}: pass arch=... naming its architecture")
        model = build_architecture(arch, data)
        try:
            model.load_state_dict(load_checkpoint(path))
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {path} does not fit architecture {arch!r}: {exc}") from exc
        frozen = FrozenReference(model.to(dev), name=f"{arch}@{path.name}")
        frozen.clean_acc = accuracy(frozen, test_x, test_y)
        return frozen

    name = str(reference)
    file, meta = _cache_entry(name, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, cache_dir=cache_dir)
    say = progress or logger.info

    def compute() -> dict[str, Tensor]:
        say(f"training reference {name} for {epochs} epochs (cached at {file})")
        torch.manual_seed(seed)
        net = build_architecture(name, data)
        train(net, data, lam=0.0, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=dev,
              log=say, what=f"reference {name}")
        acc = accuracy(net, test_x, test_y)
        trained_with = torch.tensor(list(numerics(dev).encode()), dtype=torch.uint8)
        return {**{f"state.{k}": v for k, v in net.state_dict().items()}, "clean_acc": torch.tensor(acc),
                TRAINED_WITH: trained_with}

    stored = cache.cached_tensors(file, meta, compute, what=f"reference {name}")
    if TRAINED_WITH in stored and (then := bytes(stored[TRAINED_WITH].tolist()).decode()) != numerics(dev):
        say(f"reference {name} from the cache ({file}) was trained with {then}; this run has {numerics(dev)}, which "
            "would train other weights: the adversarial sets and every table follow the cached ones (a fresh "
            "cache_dir retrains it)")
    model = build_architecture(name, data)
    model.load_state_dict({k[len("state.") :]: v for k, v in stored.items() if k.startswith("state.")})
    frozen = FrozenReference(model.to(dev), name=name, clean_acc=float(stored["clean_acc"]))
    return frozen
