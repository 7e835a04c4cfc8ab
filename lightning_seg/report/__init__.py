"""``lseg report``: tables (Markdown, CSV, standalone HTML) and plots of sweeps and runs.

``make_report`` reads a sweep folder, run folders or a W&B sweep and writes ``report.md``,
``report.csv``, ``report.html`` (plots embedded) and the plots as PNG files.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from lightning_seg.report.runs import ReportError, RunRecord, read_inputs, read_wandb_runs
from lightning_seg.report.table import Table, build_table, to_markdown
from lightning_seg.sweeps.spec import Metric

__all__ = ["Report", "ReportError", "RunRecord", "make_report"]


@dataclass
class Report:
    """What ``make_report`` wrote and the table it holds."""

    table: Table
    records: list[RunRecord]
    params: list[str]
    files: dict[str, Path]
    plots: list[Path]

    @property
    def markdown(self) -> str:
        return to_markdown(self.table)


def make_report(
    inputs: list[str] | None = None,
    out: Path | None = None,
    metric: Metric | None = None,
    wandb_path: str | None = None,
    plots: bool = True,
    title: str | None = None,
    wandb_api=None,
) -> Report:
    """Read runs, write the report.

    Args:
        inputs: sweep folders (several: reported together, e.g. a sweep and its extra seeds),
            or run folders (or folders holding run folders).
        out: where to write (default: ``<sweep folder>/report``, else ``./report``).
        metric: the headline metric (default: the sweep's, else ``val/score`` maximised).
        wandb_path: ``entity/project[/sweep_id]`` to read from the W&B API instead.
        plots: write the PNG plots (needs matplotlib).
        title: the HTML page's title.
        wandb_api: a stand-in for ``wandb.Api()`` (tests).
    """
    from lightning_seg.report.html_page import render_html
    from lightning_seg.report.plots import write_plots
    from lightning_seg.report.table import write_tables

    facts: dict[str, str] = {}
    state = None
    if wandb_path:
        metric = metric or Metric()
        records = read_wandb_runs(wandb_path, metric, api=wandb_api)
        params = [n for n in dict.fromkeys(k for r in records for k in r.params)
                  if len({repr(r.params.get(n)) for r in records}) > 1]
        facts["W&B"] = wandb_path
        default_out = Path("report")
    else:
        if not inputs:
            raise ReportError("give a sweep folder, run folders, or --wandb ENTITY/PROJECT[/SWEEP_ID]")
        state, records, params = read_inputs(inputs)
        if state is not None:
            metric = metric or Metric(state.metric.get("name", "val/score"), state.metric.get("goal", "maximize"))
            facts.update({"sweep file": state.sweep_file, "experiment": str(state.experiment or "(swept)"),
                          "method": state.method})
            default_out = Path(inputs[0]) / "report"
        else:
            metric = metric or Metric()
            facts["runs"] = ", ".join(str(r.run_dir) for r in records)
            default_out = Path("report")
    facts["metric"] = f"{metric.name} ({metric.goal})"
    # a finished run without a single value of the headline metric (stopped before its first
    # validation, or a metrics.csv that is not lseg's) still gets its row, but is named here
    empty = [r.name for r in records if r.status == "finished" and r.best(metric) is None]
    if empty:
        facts[f"runs without {metric.name}"] = ", ".join(empty)
        print(f"[report] warning: {len(empty)} finished run(s) logged no {metric.name}: {', '.join(empty)}",
              file=sys.stderr, flush=True)
    out = Path(out) if out is not None else default_out
    table = build_table(records, params, metric)
    files = write_tables(table, out)
    pngs = write_plots(records, params, metric, out) if plots else []
    name = title or (f"Sweep {state.name}" if state is not None else "Runs")
    files["html"] = out / "report.html"
    files["html"].write_text(render_html(name, table, pngs, facts))
    return Report(table, records, params, files, pngs)
