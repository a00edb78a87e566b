"""Evaluation: accuracies, both fooling rates, the transfer matrix, gradient-masking checks and attributions."""

from __future__ import annotations

from gmsearch.evaluation import attribution
from gmsearch.evaluation.masking import MaskingReport, default_eps_grid, gradient_masking_checks
from gmsearch.evaluation.metrics import (
    EvalResult,
    accuracy,
    attack_success_rate,
    evaluate,
    fooling_rate,
    fooling_rate_from_predictions,
    predict,
)
from gmsearch.evaluation.transfer import TransferMatrix, transfer_matrix

__all__ = [
    "EvalResult",
    "MaskingReport",
    "TransferMatrix",
    "accuracy",
    "attack_success_rate",
    "attribution",
    "default_eps_grid",
    "evaluate",
    "fooling_rate",
    "fooling_rate_from_predictions",
    "gradient_masking_checks",
    "predict",
    "transfer_matrix",
]
