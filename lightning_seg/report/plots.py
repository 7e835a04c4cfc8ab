"""Report plots (PNG, matplotlib, the optional ``report`` extra): the headline metric against
each swept parameter, the validation curves overlaid, and the metric against what it costs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_seg.report.runs import RunRecord
from lightning_seg.sweeps.spec import Metric, format_value, short_names

MISSING_MATPLOTLIB = "plots need matplotlib: pip install 'lightning_seg[report]' (tables are written without it)"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _label(value: Any) -> str:
    text = format_value(value) if not isinstance(value, str) else value
    return text if len(text) <= 28 else text[:25] + "..."


def plot_metric_vs_param(records: Sequence[RunRecord], param: str, others: Sequence[str], metric: Metric,
                         path: Path) -> Path | None:
    """Best ``metric`` of each run against ``param``; one line per combination of the other
    swept parameters. None when no run has a result."""
    runs = [(r, r.best(metric)) for r in records]
    runs = [(r, b) for r, b in runs if b is not None and param in r.params]
    if not runs:
        return None
    names = short_names([param, *others])
    numeric = all(_is_number(r.params[param]) for r, _ in runs)
    order: list[str] = []
    for r, _ in runs:
        key = _label(r.params[param])
        if key not in order:
            order.append(key)
    groups: dict[str, list[tuple[Any, float]]] = {}
    for r, best in runs:
        group = ", ".join(f"{names[o]}={_label(r.params.get(o))}" for o in others) or metric.name
        x = r.params[param] if numeric else order.index(_label(r.params[param]))
        groups.setdefault(group, []).append((x, best.value))
    fig = _figure()
    ax = fig.subplots()
    for group, points in groups.items():
        points.sort(key=lambda p: p[0])
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=group)
    if numeric:
        xs = [float(r.params[param]) for r, _ in runs]
        if min(xs) > 0 and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
    else:
        ax.set_xticks(range(len(order)), order, rotation=20 if max(map(len, order)) > 8 else 0)
    ax.set_xlabel(names[param])
    ax.set_ylabel(f"{metric.name} (best)")
    ax.set_title(f"{metric.name} vs {names[param]}")
    ax.grid(True, alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize="small", title=", ".join(names[o] for o in others), title_fontsize="small")
    fig.savefig(path)
    return path


def plot_curves(records: Sequence[RunRecord], params: Sequence[str], metric: Metric, path: Path) -> Path | None:
    """``metric`` over epochs (or steps) of every run, overlaid: one colour per value of the first
    parameter, one line style per combination of the others."""
    names = short_names(list(params)) if params else {}
    curves = [(r, r.history.get(metric.name, [])) for r in records]
    curves = [(r, pts) for r, pts in curves if pts]
    if not curves:
        return None
    use_epoch = all(p.epoch is not None for _, pts in curves for p in pts)
    first, rest = (params[0], list(params[1:])) if params else (None, [])
    colours: dict[str, str] = {}
    styles: dict[str, str] = {}
    fig = _figure(8.0, 4.0)
    ax = fig.subplots()
    for i, (r, pts) in enumerate(curves):
        xs = [(p.epoch + 1) if use_epoch else p.step for p in pts]
        label = r.name + (": " + ", ".join(f"{names[n]}={_label(r.params.get(n))}" for n in params) if params else "")
        key = _label(r.params.get(first)) if first else str(i)
        colour = colours.setdefault(key, f"C{len(colours) % 10}")
        style = styles.setdefault(", ".join(_label(r.params.get(n)) for n in rest),
                                  ("-", "--", ":", "-.")[len(styles) % 4])
        ax.plot(xs, [p.value for p in pts], marker="o" if len(pts) < 30 else None, markersize=3, label=label,
                color=colour, linestyle=style)
    if use_epoch:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch" if use_epoch else "step")
    ax.set_ylabel(metric.name)
    ax.set_title(f"validation {metric.name}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path)
    return path


def plot_cost(records: Sequence[RunRecord], metric: Metric, path: Path) -> Path | None:
    """Best ``metric`` against GFLOPs per image and against latency (runs that logged them)."""
    panels = [("cost/flops", "GFLOPs per image", 1e-9), ("cost/latency_ms", "latency (ms)", 1.0)]
    panels = [p for p in panels if any(r.final(p[0]) is not None and r.best(metric) for r in records)]
    if not panels:
        return None
    fig = _figure(4.0 * len(panels) + 0.8, 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, title, scale) in zip(axes, panels):
        for r in records:
            best, cost = r.best(metric), r.final(key)
            if best is None or cost is None:
                continue
            ax.scatter([cost * scale], [best.value], color="C0")
            ax.annotate(r.name, (cost * scale, best.value), textcoords="offset points", xytext=(4, 4),
                        fontsize="small")
        ax.set_xlabel(title)
        ax.set_ylabel(f"{metric.name} (best)")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{metric.name} vs cost")
    fig.savefig(path)
    return path


def write_plots(records: Sequence[RunRecord], params: Sequence[str], metric: Metric, folder: Path) -> list[Path]:
    """Every plot of a report into ``folder``; [] without matplotlib (a message says so)."""
    if not have_matplotlib():
        print(f"[report] {MISSING_MATPLOTLIB}", flush=True)
        return []
    folder.mkdir(parents=True, exist_ok=True)
    slug = metric.name.replace("/", "_")
    names = short_names(list(params)) if params else {}
    out: list[Path | None] = []
    for p in params:
        others = [o for o in params if o != p]
        png = folder / f"{slug}_vs_{names[p].replace('/', '_')}.png"
        out.append(plot_metric_vs_param(records, p, others, metric, png))
    out.append(plot_curves(records, params, metric, folder / f"{slug}_curves.png"))
    out.append(plot_cost(records, metric, folder / f"{slug}_vs_cost.png"))
    return [p for p in out if p is not None]
