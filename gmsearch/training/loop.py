"""One training loop for trials, baselines, references and refinement.

``train(net, data, reference=..., lam=...)`` minimises ``CE + lam * GM``
(paper eq. 2); ``lam=0`` (or no reference) is plain cross-entropy. The whole
dataset stays on the device as tensors and batches are index slices (no
DataLoader in the hot loop). Reference input gradients are computed once per
split and cached; with augmentation they are computed on the fly. The loss is
checked for NaN/Inf once per epoch (no host synchronisation per step).

Fast path (measured by ``benchmarks/run.py``): on CUDA cuDNN's autotuner is
on (``cudnn.benchmark``; off under ``torch.use_deterministic_algorithms(True)``),
Adam is the fused kernel and images and network are ``channels_last``; every
step differentiates w.r.t. the parameters only; the GM step differentiates
BatchNorm, ReLU, ``cat`` and adaptive pooling twice through
:mod:`gmsearch.losses`' closed forms. The GM step always runs in float32
(TF32 convolutions on CUDA, PyTorch's default). bf16 autocast is offered for
plain cross-entropy training only (``amp=True``) and is off by default: on an
H100 it made no epoch faster for networks of this size.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import optuna
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmsearch import cache, interrupt
from gmsearch.data._loaders import Dataset, Split
from gmsearch.evaluation import accuracy
from gmsearch.training import gm_loss as losses
from gmsearch.training._graphs import GraphedStep

logger = logging.getLogger(__name__)


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What :func:`train` did: per-epoch metrics and the final ones."""

    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    cuda_graph: dict[str, Any] | None = None  # with ``cuda_graph=True`` on CUDA: GraphedStep.summary()

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def numerics(device: str | torch.device | None = None) -> str:
    """What a seeded run's numbers depend on beside the seed, e.g. ``torch 2.14.1, cpu, 2 threads``.

    The seed fixes the data split, the genomes, every initialisation and batch order; the last bits of
    every sum still depend on the torch build, the device (CPU model, GPU) and, on CPU, how many intra-op
    threads split each reduction, and training carries those bits into different networks.
    """
    dev = resolve_device(device)
    if dev.type != "cpu":
        return f"torch {torch.__version__}, {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else dev.type}"
    threads = torch.get_num_threads()
    return f"torch {torch.__version__}, cpu, {threads} thread{'' if threads == 1 else 's'}"


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


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (macOS, musl, Windows)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    return cast(Callable[[int], int], trim) if trim is not None else None


def release_memory(device: str | torch.device | None = None) -> None:
    """Give memory freed by the last trial back to the system, so a long study does not grow.

    On CUDA, PyTorch's cached blocks go back to the driver; on Linux CPU,
    glibc's free lists are trimmed (it keeps the activations of the largest
    network so far otherwise: a few hundred MB of resident memory).
    """
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _use_fast_cuda(dev: torch.device) -> None:
    """On CUDA, cuDNN's autotuner picks the fastest kernel per conv shape, by timing: faster, but which kernel
    wins (and so the last bits of every result) can change from run to run. Left off when the caller asked
    PyTorch for deterministic algorithms (``torch.use_deterministic_algorithms(True)``)."""
    if dev.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    ref_grad: Tensor | None,
    *,
    lam: float = 1.0,
    loss: str = "cosine",
    params: list[nn.Parameter] | None = None,
    autocast: torch.autocast | None = None,
    gm_batchnorm: str = "batch",
) -> Tensor:
    """One optimiser step on ``CE + lam * GM`` (plain CE without ``ref_grad``); what :func:`train` runs.

    Returns:
        ``[loss, ce, gm]`` of the batch, detached, on the batch's device (no host synchronisation).
    """
    if ref_grad is not None:
        # float32: never under autocast
        ce, gm = losses.gm_objective(net, x, y, ref_grad, variant=loss, batchnorm=gm_batchnorm)
        total = ce + lam * gm
    else:
        with autocast if autocast is not None else contextlib.nullcontext():
            ce = F.cross_entropy(net(x), y)
        gm = torch.zeros((), device=x.device)
        total = ce
    optimizer.zero_grad(set_to_none=True)
    total.backward(inputs=params or None)  # parameters only: no gradient for the input batch
    optimizer.step()
    return torch.stack([total.detach(), ce.detach(), gm.detach()]).float()


def report_epoch(trial: optuna.Trial | None, value: float, epoch: int) -> None:
    """``trial.report(value, epoch)``, then raise ``optuna.TrialPruned`` if the trial's pruner says so."""
    if trial is None or len(trial.study.directions) > 1:
        return  # Optuna has no intermediate values for multi-objective studies
    trial.report(value, epoch)
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at epoch {epoch} with intermediate value {value:.4f}")


def train(
    net: nn.Module,
    data: Dataset,
    *,
    reference: nn.Module | Sequence[nn.Module] | None = None,
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
    channels_last: bool | None = None,
    amp: bool = False,
    log: Callable[[str], None] | None = None,
    what: str | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    cuda_graph: bool = False,
    gm_batchnorm: str = "batch",
) -> TrainResult:
    """Train ``net`` on ``data.train`` with ``CE + lam * GM`` (paper eq. 2).

    Args:
        net: The network to train (modified in place, moved to ``device``).
        data: Dataset bundle; ``train`` is trained on, ``val`` is reported.
        reference: Frozen reference network; needed when ``lam != 0``. Several (a list) make the GM term the
            mean of the per-reference terms.
        lam: Weight of the GM loss; 0 gives plain cross-entropy.
        epochs: Number of passes over the training split.
        batch_size: Mini-batch size (paper: 128).
        lr: Adam learning rate; None keeps PyTorch's default (paper).
        loss: GM variant from :mod:`gmsearch.losses` (``cosine`` = eq. 1).
        device: Where to train; default CUDA if available, else CPU.
        seed: Fixes batch order.
        trial: Optuna trial to ``report`` per-epoch values to (pruners work).
        ref_grads: Precomputed reference input gradients for ``data.train`` (K x its shape for K references).
        augment: Optional transform of each input batch; reference gradients
            are then computed on the fly.
        adversarial_val: Adversarial validation set (``.x``, ``.y``) measured
            each epoch; with ``fitness`` its value is what the trial reports.
        fitness: ``(clean_acc, adv_acc) -> value`` reported to the trial.
        cache_dir: Where reference gradients are cached (None: not cached).
        channels_last: Keep images and the network in ``channels_last``
            memory format; None: only on CUDA.
        amp: bf16 autocast for plain cross-entropy training on CUDA (``lam=0``);
            ignored on CPU and for GM training, which stays float32. Off by
            default: it measured no faster for small networks.
        log: Where the line of each epoch goes (default: this module's logger at INFO).
        what: Names the training in those lines.
        on_epoch: Called with ``(epoch, value)`` after each epoch instead of
            reporting to ``trial`` (e.g. :class:`gmsearch.search.EpochReports`,
            which batches the writes); may raise ``optuna.TrialPruned``.
        cuda_graph: On CUDA, capture the training step in a CUDA graph after
            a few eager batches and replay it for every full batch (partial
            batches run eagerly; see :mod:`gmsearch.training._graphs`).
            Ignored on CPU, with ``augment`` and with ``amp``; a step that
            cannot be captured trains eagerly.
        gm_batchnorm: How the GM term's input gradient treats the child's
            BatchNorm: ``batch``, ``running`` or ``detached`` (see
            :mod:`gmsearch.training.gm_loss`).

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
    refs = [] if reference is None else [reference] if isinstance(reference, nn.Module) else list(reference)
    if use_gm and not refs:
        raise ValueError("lam != 0 needs a reference network (pass reference=...)")
    if trial is not None and on_epoch is not None:
        raise ValueError("pass trial or on_epoch, not both (on_epoch replaces reporting to the trial)")
    losses.get(loss)  # unknown variant: clear error before any work
    losses.check_batchnorm_mode(gm_batchnorm)

    dev = resolve_device(device)
    _use_fast_cuda(dev)
    net.to(dev)
    x_train, y_train = data.train.x.to(dev), data.train.y.to(dev)
    x_val, y_val = data.val.x.to(dev), data.val.y.to(dev)
    if use_gm:
        for ref in refs:
            ref.to(dev).eval()
        if augment is None and ref_grads is None:
            grads = [reference_gradients(ref, data.train.to(dev), cache_dir=cache_dir) for ref in refs]
            ref_grads = grads[0] if len(grads) == 1 else torch.stack(grads)
        if ref_grads is not None:
            ref_grads = ref_grads.to(dev)
    if channels_last if channels_last is not None else dev.type == "cuda":
        net.to(memory_format=torch.channels_last)
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    use_amp = amp and not use_gm and dev.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp)
    params = [p for p in net.parameters() if p.requires_grad]
    graph = cuda_graph and dev.type == "cuda" and augment is None and not use_amp
    adam: dict[str, Any] = {"fused": True} if dev.type == "cuda" else {}
    if graph:
        adam["capturable"] = True  # the step count stays on the device, so the update can be replayed
    if lr is not None:
        adam["lr"] = lr
    optimizer = torch.optim.Adam(params, **adam)
    x_adv_val = adversarial_val.x.to(dev) if adversarial_val is not None else None
    y_adv_val = adversarial_val.y.to(dev) if adversarial_val is not None else None

    def one_step(xb: Tensor, yb: Tensor, gb: Tensor | None) -> Tensor:
        return train_step(net, optimizer, xb, yb, gb, lam=lam, loss=loss, params=params, autocast=autocast,
                          gm_batchnorm=gm_batchnorm)

    run_step = GraphedStep(one_step, batch_size, params) if graph else one_step

    def step(xb: Tensor, yb: Tensor, idx: Tensor) -> Tensor:
        if augment is not None:
            xb = augment(xb)
        gb = None
        if use_gm and augment is not None:  # on the fly: the transformed batch's own reference gradients
            made = [losses.input_gradients(ref, xb, yb) for ref in refs]
            gb = made[0] if len(made) == 1 else torch.stack(made)
        elif use_gm:
            assert ref_grads is not None
            gb = ref_grads[idx] if ref_grads.dim() == xb.dim() else ref_grads[:, idx]
        return run_step(xb, yb, gb)

    def measure(record: dict[str, float]) -> None:
        record["val_acc"] = accuracy(net, x_val, y_val)
        if x_adv_val is not None and y_adv_val is not None:
            record["val_adv_acc"] = accuracy(net, x_adv_val, y_adv_val)

    def report(epoch: int, record: dict[str, float]) -> None:
        value = record["val_acc"]
        if fitness is not None and "val_adv_acc" in record:
            fit = fitness(record["val_acc"], record["val_adv_acc"])
            value = float(fit) if not isinstance(fit, tuple) else float(min(fit))
        if on_epoch is not None:
            on_epoch(epoch, value)
        else:
            report_epoch(trial, value, epoch)

    try:
        result = run_epochs(
            net, x_train, y_train, epochs=epochs, batch_size=batch_size, seed=seed, step=step,
            columns=("loss", "ce", "gm"), measure=measure, after_epoch=report, log=log,
            what=what or f"GM training (lam={lam})", hint=f"lower lam or the learning rate (loss={loss!r})",
        )
        if isinstance(run_step, GraphedStep):
            result.cuda_graph = run_step.summary()
            logger.info("CUDA graph: %s", result.cuda_graph)
        return result
    finally:
        release_memory(dev)  # this trial's activations go back to the system


MinibatchStep = Callable[[Tensor, Tensor, Tensor], Tensor]


def run_epochs(
    net: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    step: MinibatchStep,
    columns: tuple[str, ...] = ("loss",),
    measure: Callable[[dict[str, float]], None] | None = None,
    after_epoch: Callable[[int, dict[str, float]], None] | None = None,
    what: str = "training",
    hint: str = "lower the learning rate",
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """The one epoch loop: seeded index-slice minibatches over the training tensors, on their device.

    Every trainer (GM training, free and fast adversarial training) supplies
    only its minibatch ``step(xb, yb, idx)``, which takes its optimiser steps
    and returns their losses, shape ``[columns]`` or ``[steps, columns]``
    (detached, on the device: the host synchronises once per epoch). A batch
    of one is skipped (it breaks BatchNorm statistics).

    Args:
        net: The network (put in train mode each epoch, eval mode at the end).
        x_train: Training images, on the device.
        y_train: Training labels, on the device.
        epochs: Passes over the training tensors.
        batch_size: Minibatch size.
        seed: Fixes the batch order.
        step: The minibatch step.
        columns: Names of the loss columns ``step`` returns; the first is checked for NaN/Inf.
        measure: Adds metrics (e.g. ``val_acc``) to each epoch's record.
        after_epoch: Called with each finished record (e.g. to report to an Optuna trial).
        what: Names the trainer in log lines and errors.
        hint: What to try when the loss diverges.
        log: Where the line of each epoch goes (default: this module's logger at INFO).

    Raises:
        TrainingDivergedError: the mean loss of an epoch is NaN or infinite.
    """
    generator = torch.Generator().manual_seed(seed)
    dev, n = x_train.device, len(x_train)
    result = TrainResult(epochs=epochs)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        net.train()
        order = torch.randperm(n, generator=generator).to(dev, non_blocking=True)
        totals = torch.zeros(len(columns), device=dev)
        steps = 0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:
                continue
            interrupt.check()  # Ctrl-C stops between steps, never inside one
            out = step(x_train[idx], y_train[idx], idx).reshape(-1, len(columns))
            totals += out.sum(0)
            steps += out.shape[0]
        means = (totals / max(steps, 1)).tolist()
        if not math.isfinite(means[0]):
            raise TrainingDivergedError(f"{what}: training loss became {means[0]} at epoch {epoch}; {hint}")
        record: dict[str, float] = {"epoch": epoch, **dict(zip(columns, means, strict=True))}
        if measure is not None:
            measure(record)
        record["seconds"] = time.perf_counter() - t0
        result.history.append(record)
        metrics = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "seconds"))
        (log or logger.info)(f"{what} epoch {epoch}/{epochs} {metrics} {record['seconds']:.1f}s")
        if after_epoch is not None:
            after_epoch(epoch, record)
    net.eval()
    result.seconds = time.perf_counter() - start
    return result
