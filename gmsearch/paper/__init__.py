"""The paper's experiments (Tables 1-7, Fig. 3) on top of the library; imported only on demand.

The scripts in ``examples/`` are thin: they parse the common command line
(:func:`experiment_parser`), build an :class:`Experiment` (data, reference,
objective and study assembled by :mod:`gmsearch.pipeline`), call one table
function and print it.
"""

from __future__ import annotations

from gmsearch.paper.harness import Experiment
from gmsearch.paper.settings import (
    FULL,
    PAPER,
    QUICK,
    ExperimentSettings,
    PaperTable,
    dataset_label,
    experiment_parser,
    load_data,
    settings_from_args,
)
from gmsearch.paper.tables import fig3, masking_checks, paper_dataset, table1, table2, table3, table4, table5, table6

__all__ = [
    "FULL",
    "PAPER",
    "QUICK",
    "Experiment",
    "ExperimentSettings",
    "PaperTable",
    "dataset_label",
    "experiment_parser",
    "fig3",
    "load_data",
    "masking_checks",
    "paper_dataset",
    "settings_from_args",
    "table1",
    "table2",
    "table3",
    "table4",
    "table5",
    "table6",
]
