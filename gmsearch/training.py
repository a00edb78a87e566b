"""One training loop for trials, baselines, references and refinement.

``train(net, data, reference=..., lam=...)`` minimises ``CE + lam * GM``
(paper eq. 2); ``lam=0`` (or no reference) is plain cross-entropy. The whole
dataset stays on the device as tensors and batches are index slices (no
DataLoader in the hot loop). Reference input gradients are computed once per
split and cached; with augmentation they are computed on the fly. The loss is
checked for NaN/Inf once per epoch (no host synchronisation per step).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmsearch import cache, losses
from gmsearch.datasets import Dataset, Split
from gmsearch.evaluation import accuracy

logger = logging.getLogger(__name__)


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What :func:`train` did: per-epoch metrics and the final ones."""

    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reference_gradients(
    reference: nn.Module,
    split: Split,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 512,
) -> Tensor:
    """Input gradients of the reference's cross-entropy for every sample of ``split``.

    The reference is frozen and the data fixed, so these are computed once and
    cached (keyed by the reference's weights and the split's content).
    """

    def compute() -> dict[str, Tensor]:
        was_training = reference.training
        reference.eval()
        try:
            chunks = [
                losses.input_gradients(reference, split.x[i : i + batch_size], split.y[i : i + batch_size])
                for i in range(0, len(split), batch_size)
            ]
        finally:
            reference.train(was_training)
        return {"grad": torch.cat(chunks).detach()}

    if cache_dir is None:
        return compute()["grad"]
    meta = {
        "what": "reference_gradients",
        "reference": cache.state_digest(reference.state_dict()),
        "x": cache.tensor_digest(split.x),
        "y": cache.tensor_digest(split.y),
    }
    path = Path(cache_dir) / "refgrads" / f"{cache.content_hash(meta)}.pt"
    grad = cache.cached_tensors(path, meta, compute, what="reference gradients")["grad"]
    return grad.to(split.x.device)


def _report(trial: optuna.Trial | None, value: float, epoch: int) -> None:
    if trial is None or len(trial.study.directions) > 1:
        return  # Optuna has no intermediate values for multi-objective studies
    trial.report(value, epoch)
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at epoch {epoch} with intermediate value {value:.4f}")


def train(
    net: nn.Module,
    data: Dataset,
    *,
    reference: nn.Module | None = None,
    lam: float = 1.0,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float | None = None,
    loss: str = "cosine",
    device: str | torch.device | None = None,
    seed: int = 0,
    trial: optuna.Trial | None = None,
    ref_grads: Tensor | None = None,
    augment: Callable[[Tensor], Tensor] | None = None,
    adversarial_val: Any = None,
    fitness: Callable[[float, float], Any] | None = None,
    cache_dir: str | Path | None = None,
) -> TrainResult:
    """Train ``net`` on ``data.train`` with ``CE + lam * GM`` (paper eq. 2).

    Args:
        net: The network to train (modified in place, moved to ``device``).
        data: Dataset bundle; ``train`` is trained on, ``val`` is reported.
        reference: Frozen reference network; needed when ``lam != 0``.
        lam: Weight of the GM loss; 0 gives plain cross-entropy.
        epochs: Number of passes over the training split.
        batch_size: Mini-batch size (paper: 128).
        lr: Adam learning rate; None keeps PyTorch's default (paper).
        loss: GM variant from :mod:`gmsearch.losses` (``cosine`` = eq. 1).
        device: Where to train; default CUDA if available, else CPU.
        seed: Fixes batch order.
        trial: Optuna trial to ``report`` per-epoch values to (pruners work).
        ref_grads: Precomputed reference input gradients for ``data.train``.
        augment: Optional transform of each input batch; reference gradients
            are then computed on the fly.
        adversarial_val: Adversarial validation set (``.x``, ``.y``) measured
            each epoch; with ``fitness`` its value is what the trial reports.
        fitness: ``(clean_acc, adv_acc) -> value`` reported to the trial.
        cache_dir: Where reference gradients are cached (None: not cached).

    Returns:
        A :class:`TrainResult` with per-epoch ``loss``, ``ce``, ``gm``,
        ``val_acc`` (and ``val_adv_acc``) and ``seconds``.

    Raises:
        TrainingDivergedError: the loss became NaN or infinite.
        ValueError: ``lam != 0`` without a reference, or bad arguments.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm), got {batch_size}")
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam}")
    use_gm = lam != 0.0
    if use_gm and reference is None:
        raise ValueError("lam != 0 needs a reference network (pass reference=...)")
    losses.get(loss)  # unknown variant: clear error before any work

    dev = resolve_device(device)
    net.to(dev)
    x_train, y_train = data.train.x.to(dev), data.train.y.to(dev)
    x_val, y_val = data.val.x.to(dev), data.val.y.to(dev)
    if use_gm:
        assert reference is not None
        reference.to(dev).eval()
        if augment is None and ref_grads is None:
            ref_grads = reference_gradients(reference, data.train.to(dev), cache_dir=cache_dir)
        if ref_grads is not None:
            ref_grads = ref_grads.to(dev)
    optimizer = torch.optim.Adam(net.parameters()) if lr is None else torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    n = len(x_train)
    result = TrainResult(epochs=epochs)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        net.train()
        order = torch.randperm(n, generator=generator).to(dev)
        totals = torch.zeros(3, device=dev)  # loss, ce, gm summed over steps
        steps = 0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:  # a batch of one breaks BatchNorm statistics
                continue
            xb, yb = x_train[idx], y_train[idx]
            if augment is not None:
                xb = augment(xb)
            if use_gm:
                assert reference is not None
                gb = losses.input_gradients(reference, xb, yb) if augment is not None else ref_grads[idx]  # type: ignore[index]
                ce, gm = losses.gm_objective(net, xb, yb, gb, variant=loss)
                total = ce + lam * gm
            else:
                ce = F.cross_entropy(net(xb), yb)
                gm = torch.zeros((), device=dev)
                total = ce
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            totals += torch.stack([total.detach(), ce.detach(), gm.detach()])
            steps += 1
        mean_loss, mean_ce, mean_gm = (totals / max(steps, 1)).tolist()
        if not math.isfinite(mean_loss):
            raise TrainingDivergedError(
                f"training loss became {mean_loss} at epoch {epoch} (lam={lam}, loss={loss!r}); "
                "lower lam or the learning rate"
            )
        record: dict[str, float] = {
            "epoch": epoch, "loss": mean_loss, "ce": mean_ce, "gm": mean_gm,
            "val_acc": accuracy(net, x_val, y_val),
        }
        value = record["val_acc"]
        if adversarial_val is not None:
            record["val_adv_acc"] = accuracy(net, adversarial_val.x.to(dev), adversarial_val.y.to(dev))
            if fitness is not None:
                fit = fitness(record["val_acc"], record["val_adv_acc"])
                value = float(fit) if not isinstance(fit, tuple) else float(min(fit))
        record["seconds"] = time.perf_counter() - t0
        result.history.append(record)
        logger.info(
            "epoch %d/%d loss %.4f (ce %.4f gm %.4f) val_acc %.4f%s %.1fs",
            epoch, epochs, mean_loss, mean_ce, mean_gm, record["val_acc"],
            f" val_adv_acc {record['val_adv_acc']:.4f}" if "val_adv_acc" in record else "",
            record["seconds"],
        )
        _report(trial, value, epoch)
    net.eval()
    result.seconds = time.perf_counter() - start
    return result
