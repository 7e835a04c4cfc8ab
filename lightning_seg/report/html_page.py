"""A standalone HTML page of a report: the table and the plots embedded as base64 PNGs (one file
to attach, mail or open anywhere; no scripts, no external resources)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from lightning_seg.report.table import Table, means_to_html, to_html_table

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 14px; }
table.means { display: inline-table; margin: 0 1.5em 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f0f0f0; }
td.metric, td.cost { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #e6f4e6; font-weight: 600; }
tr.failed td { color: #a00; }
figure { display: inline-block; margin: 1em 1em 0 0; }
figcaption { font-size: 13px; color: #555; }
dl { font-size: 14px; } dt { font-weight: 600; } dd { margin: 0 0 0.5em 1em; }
"""


def render_html(title: str, table: Table, plots: Sequence[Path], facts: dict[str, str] | None = None) -> str:
    """The page as a string.

    Args:
        title: page title and heading.
        table: the report table.
        plots: PNG files, embedded in order.
        facts: lines shown above the table (sweep file, experiment, method, metric...).
    """
    head = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>")
    parts = [head]
    if facts:
        parts.append("<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                      for k, v in facts.items()) + "</dl>")
    parts.append(to_html_table(table))
    if table.means:
        parts.append(f"<h2>Mean of {html.escape(table.metric.name)} best by parameter value</h2>")
        parts.append(means_to_html(table))
    if table.errors:
        parts.append("<h2>Failed runs</h2>\n<ul>" + "".join(
            f"<li><b>{html.escape(n)}</b>: {html.escape(e)}</li>" for n, e in table.errors) + "</ul>")
    if plots:
        parts.append("<h2>Plots</h2>")
        for path in plots:
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            caption = html.escape(Path(path).stem.replace("_", " "))
            parts.append(f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{caption}</figcaption></figure>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)
