"""Training: the GM loss (eq. 1-2) with its closed-form double backward, the epoch loop, and the
defenses the paper compares against (input transforms, free and fast adversarial training)."""

from __future__ import annotations

from gmsearch.training import defenses, gm_loss
from gmsearch.training.loop import TrainingDivergedError, TrainResult, reference_gradients, resolve_device, train

__all__ = [
    "TrainResult",
    "TrainingDivergedError",
    "defenses",
    "gm_loss",
    "reference_gradients",
    "resolve_device",
    "train",
]
