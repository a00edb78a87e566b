"""HTML building blocks of the report: escaping, number formats, tables, notes and the page itself."""

from __future__ import annotations

import datetime
import html
import math
from collections.abc import Callable, Iterable, Sequence

import optuna
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from gmsearch import __version__

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; margin: 0;
       color: #1f2933; background: #f5f7fa; }
header { background: #243b53; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 24px; }
header p { margin: 0; color: #d9e2ec; font-size: 14px; }
nav { padding: 8px 32px; background: #e4e7eb; font-size: 14px; }
nav a { margin-right: 16px; color: #243b53; }
main { max-width: 1360px; margin: 0 auto; padding: 8px 24px 40px 24px; }
section { background: #fff; border-radius: 6px; padding: 12px 20px 16px 20px; margin: 16px 0;
          box-shadow: 0 1px 3px rgba(0, 0, 0, 0.12); }
h2 { font-size: 20px; margin: 6px 0 10px 0; color: #243b53; }
h3 { font-size: 15px; margin: 12px 0 4px 0; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border-bottom: 1px solid #d9e2ec; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f4f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.highlight td { background: #fff8e1; }
.note { color: #52606d; font-size: 13px; font-style: italic; margin: 6px 0; }
.caption { color: #3e4c59; font-size: 13px; margin: 2px 0 6px 0; }
.figure { width: 100%; }
.card { border: 1px solid #d9e2ec; border-radius: 4px; padding: 6px 8px; margin: 10px 0; }
table.kv td:first-child { font-weight: 600; white-space: nowrap; }
.card h3 { margin: 2px 0; }
code { font-size: 12px; }
details summary { cursor: pointer; color: #243b53; margin: 6px 0; }
footer { color: #7b8794; font-size: 12px; text-align: center; padding: 12px; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object, *, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: Sequence[bool] = (),
           highlight: Callable[[int], bool] | None = None) -> str:
    """An HTML table; every cell is escaped."""
    out = ["<table><thead><tr>", *(f"<th>{_esc(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = ' class="highlight"' if highlight is not None and highlight(i) else ""
        out.append(f"<tr{cls}>")
        for j, cell in enumerate(row):
            num = ' class="num"' if j < len(numeric) and numeric[j] else ""
            out.append(f"<td{num}>{_esc(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _key_values(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table without header; every cell is escaped."""
    body = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


class _Page:
    """Sections of the report; figures share the one inline copy of plotly.js in the page head."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str, list[str]]] = []
        self._n_figures = 0

    def section(self, anchor: str, heading: str) -> list[str]:
        parts: list[str] = []
        self.sections.append((anchor, heading, parts))
        return parts

    def figure(self, fig: go.Figure, *, height: int = 460, top: int = 60) -> str:
        self._n_figures += 1
        fig.update_layout(height=height, autosize=True, margin={"l": 60, "r": 30, "t": top, "b": 50})
        body = pio.to_html(
            fig, full_html=False, include_plotlyjs=False, div_id=f"gms-fig-{self._n_figures}",
            default_width="100%", default_height=f"{height}px", config={"responsive": True, "displaylogo": False},
        )
        return f'<div class="figure">{body}</div>'

    def render(self, title: str, subtitle: str) -> str:
        nav = "".join(f'<a href="#{_esc(a)}">{_esc(h)}</a>' for a, h, _ in self.sections)
        body = "".join(
            f'<section id="{_esc(a)}"><h2>{_esc(h)}</h2>{"".join(parts)}</section>' for a, h, parts in self.sections
        )
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
            f"<header><h1>{_esc(title)}</h1><p>{_esc(subtitle)}</p></header><nav>{nav}</nav>"
            f"<main>{body}</main><footer>written by gmsearch {_esc(__version__)} with Optuna "
            f"{_esc(optuna.__version__)} on {_esc(stamp)}</footer></body></html>\n"
        )


def _brief(exc: BaseException) -> str:
    """The first line of an error message, short enough for a note (plotly's run to pages)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text[:200]}"
