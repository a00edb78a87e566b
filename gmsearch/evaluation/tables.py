"""The one text-table renderer: every plain-text table gmsearch prints goes through :func:`text_table`."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percent(value: float | None, *, digits: int = 2) -> str:
    """``0.1234`` as ``12.34%``; None or NaN as ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.{digits}f}%"


def text_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    left: Sequence[int] = (0,),
    title: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """Columns padded to their widest cell: the columns in ``left`` left-aligned, the others right-aligned.

    Args:
        header: Column headers.
        rows: Cells as strings, one sequence per row (as many cells as headers).
        left: Indexes of left-aligned columns (default: the first, the row labels).
        title: A line above the table.
        notes: Lines below it.
    """
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns: {list(row)}")
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            f"{c:<{w}}" if i in left else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return " ".join(padded).rstrip()

    lines = [title] if title else []
    lines += [line(header), *(line([str(c) for c in row]) for row in rows), *notes]
    return "\n".join(lines)
