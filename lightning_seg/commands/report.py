"""``lseg report SWEEP_DIR | RUN_DIR...``: one table of the runs, with plots.

Examples::

    lseg report outputs/sweeps/fcn_skips_r18_shapes             # a sweep folder
    lseg report outputs/unet_same_shapes_30e outputs/unet_valid_shapes_30e   # run folders
    lseg report --wandb my_team/lightning_seg/abc123xy          # a W&B sweep (online)

Writes ``report.md``, ``report.csv``, ``report.html`` (plots embedded; open it in a browser)
and the plots (PNG) into ``--out`` (default ``<sweep folder>/report``, else ``./report``), and
prints the Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_seg.sweeps.spec import GOALS, Metric


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lseg report",
        description="Tabulate and plot a sweep folder, run folders, or a W&B sweep: swept "
                    "parameters, best and final validation metrics, parameters, FLOPs, step time "
                    "and latency.",
    )
    p.add_argument("inputs", nargs="*",
                   help="sweep folders (several are reported together), or run folders (or folders holding them)")
    p.add_argument("--out", type=Path, default=None, help="output folder")
    p.add_argument("--metric", default=None, help="headline metric (default: the sweep's, else val/score)")
    p.add_argument("--goal", choices=GOALS, default="maximize", help="with --metric: higher or lower is better")
    p.add_argument("--wandb", default=None, metavar="ENTITY/PROJECT[/SWEEP_ID]",
                   help="read the runs from the W&B API (online) instead of folders")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--title", default=None, help="title of the HTML page")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from lightning_seg.report import make_report

    metric = Metric(args.metric, args.goal) if args.metric else None
    report = make_report(args.inputs, out=args.out, metric=metric, wandb_path=args.wandb,
                         plots=not args.no_plots, title=args.title)
    print(report.markdown)
    written = [report.files[k] for k in ("md", "csv", "html")] + list(report.plots)
    print("[report] wrote " + ", ".join(str(p) for p in written), flush=True)
    return 0



if __name__ == "__main__":  # python -m lightning_seg.commands.report: lseg report without loading the CLI
    from lightning_seg.commands import console

    console("report")
