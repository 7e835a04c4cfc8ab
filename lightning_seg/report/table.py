"""The report table: one row per run, as Markdown, CSV or an HTML table.

Columns: the run, its status, each swept parameter, the headline metric's best and final value
(and the epoch of the best), the final values of the other headline-level validation metrics
(``val/<name>`` and ``val/<type>/AP``; per-class entries are left to W&B's tables), then what
the run costs: parameters, GFLOPs per image, training step time, inference latency, wall time.
"""

from __future__ import annotations

import csv
import html
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_seg.report.runs import RunRecord
from lightning_seg.sweeps.spec import Metric, format_value, short_names

COST_COLUMNS = (
    ("cost/params", "params (M)", 1e-6, "{:.3g}"),
    ("cost/flops", "GFLOPs/img", 1e-9, "{:.3g}"),
    ("cost/train_step_ms", "step (ms)", 1.0, "{:.1f}"),
    ("cost/latency_ms", "latency (ms)", 1.0, "{:.1f}"),
)


@dataclass
class Column:
    """A column: its title, kind (``run``, ``param``, ``metric``, ``cost``, ``text``) and how
    a raw value is written."""

    title: str
    kind: str
    fmt: str | None = None
    scale: float = 1.0

    def format(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if self.kind == "param":
            return format_value(value)
        if isinstance(value, (int, float)) and self.fmt:
            return self.fmt.format(value * self.scale)
        return str(value)


@dataclass
class Means:
    """The headline metric's best values averaged over the runs that share a parameter value
    (a parameter's main effect; over seeds when the other parameter is ``seed_everything``).

    Attributes:
        param: the parameter's column name.
        rows: ``(value, mean, standard deviation, number of runs)`` per value, in sweep order.
    """

    param: str
    rows: list[tuple[str, float, float, int]]


@dataclass
class Table:
    """Columns, raw rows, the index of the best row (None without any result), and the means
    per parameter value when some value has several runs."""

    columns: list[Column]
    rows: list[list[Any]]
    best_row: int | None
    metric: Metric
    errors: list[tuple[str, str]]
    means: list[Means] = field(default_factory=list)

    @property
    def titles(self) -> list[str]:
        return [c.title for c in self.columns]

    def formatted(self) -> list[list[str]]:
        return [[c.format(v) for c, v in zip(self.columns, row)] for row in self.rows]


def extra_metric_names(records: Sequence[RunRecord], metric: Metric) -> list[str]:
    """Other headline-level validation metrics to show (final values), in name order: keys
    ``val/<name>`` or ``val/<type>/AP``, except losses and those equal to the headline metric
    in every run (``val/mIoU`` beside ``val/score``)."""
    keys = sorted({k for r in records for k in r.history})
    out = []
    for key in keys:
        parts = key.split("/")
        if key == metric.name or parts[0] != metric.name.split("/")[0] or "loss" in key:
            continue
        if not (len(parts) == 2 or (len(parts) == 3 and parts[2] == "AP")):
            continue
        finals = [(r.final(key), r.final(metric.name)) for r in records if r.final(key) is not None]
        if finals and all(b is not None and abs(a - b) < 1e-12 for a, b in finals):
            continue
        out.append(key)
    return out


def build_table(records: Sequence[RunRecord], param_names: Sequence[str], metric: Metric,
                extra_metrics: Sequence[str] | None = None) -> Table:
    """The report table of ``records`` (in their order)."""
    names = short_names(list(param_names))
    extra = list(extra_metrics) if extra_metrics is not None else extra_metric_names(records, metric)
    columns = [Column("run", "run"), Column("status", "text")]
    columns += [Column(names[n], "param") for n in param_names]
    columns += [Column(f"{metric.name} best", "metric", "{:.4f}"),
                Column(f"{metric.name} final", "metric", "{:.4f}"),
                Column("best epoch", "text", "{:.0f}")]
    columns += [Column(f"{k} final", "metric", "{:.4f}") for k in extra]
    cost = [c for c in COST_COLUMNS if any(r.final(c[0]) is not None for r in records)]
    columns += [Column(title, "cost", fmt, scale) for _, title, scale, fmt in cost]
    with_time = any(r.duration_s is not None for r in records)
    if with_time:
        columns.append(Column("time (min)", "cost", "{:.1f}", 1 / 60))
    rows, errors = [], []
    best_row, best_value = None, None
    for i, r in enumerate(records):
        best = r.best(metric)
        row = [r.name, r.status, *[r.params.get(n) for n in param_names],
               best.value if best else None, r.final(metric.name), best.epoch if best else None]
        row += [r.final(k) for k in extra]
        row += [r.final(key) for key, *_ in cost]
        if with_time:
            row.append(r.duration_s)
        rows.append(row)
        if best is not None and (best_value is None or metric.better(best.value, best_value)):
            best_row, best_value = i, best.value
        if r.error and r.status != "finished":
            errors.append((r.name, r.error))
    return Table(columns, rows, best_row, metric, errors, parameter_means(records, param_names, metric))


def parameter_means(records: Sequence[RunRecord], param_names: Sequence[str], metric: Metric) -> list[Means]:
    """``Means`` of every parameter of which some value has two runs or more with a result."""
    names = short_names(list(param_names))
    out = []
    for name in param_names:
        groups: dict[str, list[float]] = {}
        for r in records:
            best = r.best(metric)
            if best is not None and name in r.params:
                groups.setdefault(format_value(r.params[name]), []).append(best.value)
        if len(groups) < 2 or max(len(v) for v in groups.values()) < 2:
            continue
        rows = [(value, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                for value, v in groups.items()]
        out.append(Means(names[name], rows))
    return out


def to_markdown(table: Table) -> str:
    """A GitHub Markdown table; the best row's headline value in bold; errors listed below."""
    cells = table.formatted()
    if table.best_row is not None:
        j = table.titles.index(f"{table.metric.name} best")
        cells[table.best_row][j] = f"**{cells[table.best_row][j]}**"
    right = [c.kind in ("metric", "cost") for c in table.columns]
    lines = ["| " + " | ".join(_md(t) for t in table.titles) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in cells]
    for name, error in table.errors:
        lines.append(f"\n{name}: {error}")
    for means in table.means:
        lines += ["", f"Mean of `{table.metric.name}` best by {means.param}:", "",
                  f"| {_md(means.param)} | mean | std | runs |", "|---|---:|---:|---:|"]
        lines += [f"| {_md(v)} | {m:.4f} | {s:.4f} | {n} |" for v, m, s, n in means.rows]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_csv(table: Table) -> str:
    """CSV with the raw (unscaled, unrounded) values; parameters as ``lseg`` reads them."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(table.titles)
    for row in table.rows:
        writer.writerow([format_value(v) if c.kind == "param" and v is not None else ("" if v is None else v)
                         for c, v in zip(table.columns, row)])
    return out.getvalue()


def to_html_table(table: Table) -> str:
    """An HTML ``<table>`` (the best row has ``class="best"``; failed rows ``class="failed"``)."""
    head = "".join(f"<th>{html.escape(t)}</th>" for t in table.titles)
    body = []
    for i, row in enumerate(table.formatted()):
        classes = []
        if i == table.best_row:
            classes.append("best")
        if table.rows[i][1] == "failed":
            classes.append("failed")
        attr = f' class="{" ".join(classes)}"' if classes else ""
        tds = "".join(
            f'<td class="{c.kind}">{html.escape(v)}</td>' for c, v in zip(table.columns, row)
        )
        body.append(f"<tr{attr}>{tds}</tr>")
    return f'<table id="report">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body) + "\n</tbody>\n</table>"


def means_to_html(table: Table) -> str:
    """The ``Means`` as small HTML tables (``class="means"``)."""
    parts = []
    for means in table.means:
        rows = "".join(f'<tr><td>{html.escape(v)}</td><td class="metric">{m:.4f}</td>'
                       f'<td class="metric">{s:.4f}</td><td class="metric">{n}</td></tr>'
                       for v, m, s, n in means.rows)
        parts.append(f'<table class="means"><thead><tr><th>{html.escape(means.param)}</th><th>mean</th>'
                     f"<th>std</th><th>runs</th></tr></thead><tbody>{rows}</tbody></table>")
    return "\n".join(parts)


def write_tables(table: Table, folder: Path) -> dict[str, Path]:
    """``report.md`` and ``report.csv`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"md": folder / "report.md", "csv": folder / "report.csv"}
    paths["md"].write_text(to_markdown(table))
    paths["csv"].write_text(to_csv(table))
    return paths
