"""What a study stores for the report: the baseline table and attribution maps (study user attrs)."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.io as pio
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact

from gmsearch.report._page import _brief
from gmsearch.search.baselines import Row
from gmsearch.search.schema import (
    ATTRIBUTIONS_KEY,
    BASELINE_KEY,
)

logger = logging.getLogger(__name__)

#: File name of attribution maps uploaded as a study artifact (see :func:`store_attributions`).
ATTRIBUTIONS_ARTIFACT = "gmsearch_attributions.json"

def _row_from(item: Row | Mapping[str, Any]) -> Row:
    if isinstance(item, Row):
        return item
    try:
        return Row(
            name=str(item["name"]),
            clean_acc=float(item["clean_acc"]),
            adv_acc=float(item["adv_acc"]),
            fooling_rate=None if item.get("fooling_rate") is None else float(item["fooling_rate"]),
            detail=str(item.get("detail", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"bad baseline row {item!r}: need name, clean_acc, adv_acc (optional fooling_rate, detail)"
        ) from exc


def store_baseline(study: optuna.Study, rows: Iterable[Row | Mapping[str, Any]], *, title: str = "") -> None:
    """Keep the baseline table on the study (user attr :data:`BASELINE_KEY`) for :func:`write_report`.

    Args:
        study: The study the table belongs to.
        rows: :class:`~gmsearch.experiments.Row` objects (or dicts with the same fields), e.g.
            Ref, Ref+GM and NE+GM on the test split.
        title: Caption; name the split, the attack and its budget.
    """
    table = {"title": title, "rows": [dataclasses.asdict(_row_from(r)) for r in rows]}
    study.set_user_attr(BASELINE_KEY, table)


def load_baseline(study: optuna.Study) -> tuple[str, list[Row]] | None:
    """The baseline table stored by :func:`store_baseline` as ``(title, rows)``, or None."""
    stored = study.user_attrs.get(BASELINE_KEY)
    if stored is None:
        return None
    if isinstance(stored, Mapping):
        return str(stored.get("title", "")), [_row_from(r) for r in stored.get("rows", [])]
    return "", [_row_from(r) for r in stored]


def store_attributions(
    study: optuna.Study, figure: go.Figure, *, artifact_store: FileSystemArtifactStore | None = None
) -> None:
    """Keep attribution maps (a plotly figure) with the study for :func:`write_report`; the latest call wins.

    Args:
        study: The study the maps belong to.
        figure: The attribution maps, e.g. integrated gradients of the reference and the evolved nets.
        artifact_store: Upload the figure as a study artifact (for large figures) and keep
            ``{"artifact_id": ...}`` in the study user attr :data:`ATTRIBUTIONS_KEY`; None keeps the
            figure's JSON itself there.
    """
    text = figure.to_json()
    if artifact_store is None:
        study.set_user_attr(ATTRIBUTIONS_KEY, text)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ATTRIBUTIONS_ARTIFACT
        path.write_text(text, encoding="utf-8")
        artifact_id = upload_artifact(artifact_store=artifact_store, file_path=str(path), study_or_trial=study)
    study.set_user_attr(ATTRIBUTIONS_KEY, {"artifact_id": artifact_id})


def _stored_attributions(
    study: optuna.Study, artifact_store: FileSystemArtifactStore | None
) -> tuple[list[go.Figure], list[str]]:
    """The attribution figure kept with the study (if any), and notes on why it could not be read."""
    stored = study.user_attrs.get(ATTRIBUTIONS_KEY)
    if stored is None:
        return [], []
    if isinstance(stored, Mapping) and "artifact_id" in stored:
        artifact_id = str(stored["artifact_id"])
        if artifact_store is None:
            return [], [
                f"attribution maps are stored as artifact {artifact_id}; pass the artifact store "
                "(gmsearch report --artifacts DIR) to include them"
            ]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ATTRIBUTIONS_ARTIFACT
            try:
                download_artifact(artifact_store=artifact_store, artifact_id=artifact_id, file_path=str(path))
                return [pio.from_json(path.read_text(encoding="utf-8"))], []
            except (OSError, ValueError) as exc:
                return [], [f"could not read attribution artifact {artifact_id}: {_brief(exc)}"]
    try:
        return [pio.from_json(stored if isinstance(stored, str) else json.dumps(stored))], []
    except (ValueError, TypeError) as exc:
        return [], [f"study user attr {ATTRIBUTIONS_KEY!r} is not a plotly figure: {_brief(exc)}"]


