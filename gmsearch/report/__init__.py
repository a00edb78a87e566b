"""Report: the self-contained HTML report, architecture plots and export of trained trials.

Plotly is imported only when a report or plot is made, so ``gmsearch export``
and ``import gmsearch`` stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ATTRIBUTIONS_ARTIFACT": "stored", "load_baseline": "stored", "store_attributions": "stored",
    "store_baseline": "stored", "render_report": "_html", "write_report": "_html", "plot_architecture": "plotting",
    "export_trial": "export", "ExportResult": "export", "evaluate_transfer": "evaluate", "load_transfer": "evaluate",
    "plot_transfer_matrix": "plotting",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gmsearch.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gmsearch.report.{module}"), name)
