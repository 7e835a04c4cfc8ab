"""Runs as the report sees them: parameters, metric curves, final and best values, cost.

A run comes from a run folder (``config.yaml`` and ``metrics.csv``, as ``lseg fit`` writes
them), from a sweep folder (``state.json`` names each trial's parameters and run folder), or
from the W&B API (``read_wandb_runs``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from lightning_seg.errors import UserError
from lightning_seg.sweeps.spec import Metric

METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.yaml"
#: summary values the ``RunCost`` callback logs (``lightning_seg.callbacks.cost``)
COST_KEYS = ("cost/params", "cost/flops", "cost/train_step_ms", "cost/latency_ms")


class ReportError(UserError, ValueError):
    """Nothing to report, or an input that is not a run, a sweep or a W&B path."""


@dataclass
class Point:
    """One logged value of a metric."""

    epoch: float | None
    step: float | None
    value: float


@dataclass
class RunRecord:
    """One row of a report.

    Attributes:
        name: the row's label (trial id or run folder).
        params: the swept parameters (or the config keys that differ between the runs).
        status: ``finished``, ``failed``, ``running``, ``pending`` (sweeps) or ``finished``.
        run_dir: the run folder, when there is one.
        history: every logged value, by metric name, in logging order.
        config: the resolved config (nested), when known.
        error: why a failed trial failed.
        duration_s: wall time of the trial, when known.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    status: str = "finished"
    run_dir: Path | None = None
    history: dict[str, list[Point]] = field(default_factory=dict)
    config: dict | None = None
    error: str | None = None
    duration_s: float | None = None

    def final(self, key: str) -> float | None:
        """The last logged value of ``key``."""
        points = self.history.get(key)
        return points[-1].value if points else None

    def best(self, metric: Metric) -> Point | None:
        """The best logged value of ``metric`` (the first one on ties)."""
        best = None
        for p in self.history.get(metric.name, []):
            if best is None or metric.better(p.value, best.value):
                best = p
        return best

    def summary(self, metric: Metric) -> dict[str, Any] | None:
        """``{"metric", "best", "best_epoch", "best_step", "final"}``, None without values."""
        best = self.best(metric)
        if best is None:
            return None
        return {"metric": metric.name, "best": best.value, "best_epoch": best.epoch,
                "best_step": best.step, "final": self.final(metric.name)}


# ------------------------------------------------------------------ metrics.csv
def _number(text: str) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_history(path: Path) -> dict[str, list[Point]]:
    """Every value of a Lightning ``metrics.csv``, by column, with its epoch and step."""
    history: dict[str, list[Point]] = {}
    if not path.is_file():
        return history
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch, step = _number(row.get("epoch", "")), _number(row.get("step", ""))
            for key, text in row.items():
                if key in ("epoch", "step") or key is None:
                    continue
                value = _number(text)
                if value is not None:
                    history.setdefault(key, []).append(Point(epoch, step, value))
    return history


def summarize_run_dir(run_dir: Path, metric: Metric) -> dict[str, Any] | None:
    """The result of a finished run folder (for ``state.json``), None without the metric."""
    record = RunRecord(name=run_dir.name, run_dir=run_dir, history=read_history(run_dir / METRICS_FILE))
    result = record.summary(metric)
    if result is not None:
        result.update({k: record.final(k) for k in COST_KEYS if record.final(k) is not None})
    return result


# ------------------------------------------------------------------ configs
def config_value(config: dict | None, path: str) -> Any:
    """The value at a dotted argument path of a nested config; ``init_args`` may be left out
    of the path as ``lseg`` allows. ``KeyError`` when absent."""
    node: Any = config
    for part in path.split("."):
        if isinstance(node, dict) and part not in node and isinstance(node.get("init_args"), dict):
            node = node["init_args"]
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of every leaf (lists are leaves)."""
    if not isinstance(config, dict):
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def read_config(run_dir: Path) -> dict | None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())


#: keys that always differ between runs and say nothing about the model
_VOLATILE = ("trainer.logger", "trainer.default_root_dir", "ckpt_path",
             "data.init_args.root", "trainer.callbacks")


def differing_params(records: Sequence[RunRecord]) -> list[str]:
    """Config keys whose values differ between runs (run folders given without a sweep)."""
    flats = [flatten(r.config) if r.config else {} for r in records]
    keys = sorted(set().union(*flats)) if flats else []
    out = []
    for key in keys:
        if any(key == v or key.startswith(v + ".") for v in _VOLATILE):
            continue
        values = [repr(f.get(key, "<unset>")) for f in flats]
        if len(set(values)) > 1:
            out.append(key)
    return out


# ------------------------------------------------------------------ inputs
def is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file()


def read_run_dir(run_dir: Path, name: str | None = None) -> RunRecord:
    """A run folder as a report row (parameters filled later)."""
    return RunRecord(
        name=name or _run_label(run_dir),
        run_dir=run_dir,
        history=read_history(run_dir / METRICS_FILE),
        config=read_config(run_dir),
    )


def _run_label(run_dir: Path) -> str:
    parts = run_dir.resolve().parts
    if run_dir.name.startswith("version_") and len(parts) >= 2:
        return f"{parts[-2]}/{run_dir.name}"
    return run_dir.name


def find_run_dirs(folder: Path) -> list[Path]:
    """Run folders in ``folder`` itself or up to two levels below it."""
    if is_run_dir(folder):
        return [folder]
    found = sorted(p.parent for p in folder.glob(f"*/{METRICS_FILE}"))
    found += sorted(p.parent for p in folder.glob(f"*/*/{METRICS_FILE}"))
    return found


def read_sweep_dir(folder: Path) -> tuple[Any, list[RunRecord]]:
    """A sweep folder's state and one record per trial (pending ones included)."""
    from lightning_seg.sweeps.state import load_state

    state = load_state(folder)
    if state is None:
        raise ReportError(f"{folder}: no state.json (not a sweep folder)")
    records = []
    for trial in state.trials:
        run_dir = Path(trial.run_dir) if trial.run_dir else None
        if run_dir is not None and not run_dir.is_absolute():
            run_dir = folder / run_dir
        history = read_history(run_dir / METRICS_FILE) if run_dir is not None else {}
        records.append(RunRecord(
            name=trial.id, params=dict(trial.params), status=trial.status, run_dir=run_dir,
            history=history, config=read_config(run_dir) if run_dir is not None else None,
            error=trial.error, duration_s=trial.duration_s,
        ))
    return state, records


def read_inputs(paths: Iterable[str | Path]) -> tuple[Any, list[RunRecord], list[str]]:
    """Runs from sweep folders and run folders.

    Several sweep folders are reported together (e.g. a sweep and its extra seeds) when they
    share their metric: trials are named ``<sweep>/<trial>``, and a parameter one sweep did not
    sweep is read from its runs' configs.

    Returns:
        ``(state, records, param_names)``: the sweep state when sweep folders were given (of
        several, the first, named after all of them), else None; the records; and the parameter
        names (the swept parameters, or the config keys that differ between the run folders).
    """
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ReportError(f"no such folder: {', '.join(missing)}")
    sweeps = [p for p in paths if (p / "state.json").is_file()]
    if sweeps and len(sweeps) < len(paths):
        raise ReportError("give sweep folders, or run folders (not both)")
    if sweeps:
        return _read_sweeps(sweeps)
    run_dirs = [d for p in paths for d in find_run_dirs(p)]
    if not run_dirs:
        raise ReportError(f"no run folder (with {METRICS_FILE}) in {', '.join(map(str, paths))}")
    records = [read_run_dir(d) for d in run_dirs]
    names = differing_params(records) if len(records) > 1 else []
    for r in records:
        flat = flatten(r.config) if r.config else {}
        r.params = {n: flat.get(n) for n in names}
    return None, records, names


def _read_sweeps(folders: Sequence[Path]) -> tuple[Any, list[RunRecord], list[str]]:
    from lightning_seg.sweeps.spec import EXPERIMENT_PARAM

    states, per_sweep, names = [], [], []
    for folder in folders:
        state, trials = read_sweep_dir(folder)
        if states and state.metric != states[0].metric:
            raise ReportError(f"{folder} optimises {state.metric}, {folders[0]} {states[0].metric}: "
                              f"report them apart (or pass --metric and their run folders)")
        names += [n for n in _swept_names(state, trials) if n not in names]
        if len(folders) > 1:
            for r in trials:
                r.name = f"{state.name}/{r.name}"
        states.append(state)
        per_sweep.append(trials)
    for state, trials in zip(states, per_sweep):
        for r in trials:
            flat = flatten(r.config) if r.config else {}
            for n in names:
                if n not in r.params:  # swept elsewhere, fixed in this run's sweep
                    r.params[n] = state.experiment if n == EXPERIMENT_PARAM else flat.get(n)
            if r.params.get(EXPERIMENT_PARAM) is not None:
                r.params[EXPERIMENT_PARAM] = Path(str(r.params[EXPERIMENT_PARAM])).stem
    records = [r for trials in per_sweep for r in trials]
    state = states[0]
    if len(states) > 1:
        state = replace(state, name=" + ".join(s.name for s in states),
                        sweep_file=", ".join(s.sweep_file for s in states),
                        trials=[t for s in states for t in s.trials])
    return state, records, names


def _swept_names(state: Any, records: Sequence[RunRecord]) -> list[str]:
    """Parameters that take more than one value in the sweep (in the order of the file)."""
    names: list[str] = []
    for r in records:
        for n in r.params:
            if n not in names:
                names.append(n)
    return [n for n in names if len({repr(r.params.get(n)) for r in records}) > 1] or names[:1]


# ------------------------------------------------------------------ W&B
def read_wandb_runs(path: str, metric: Metric, api: Any = None) -> list[RunRecord]:
    """Runs of a W&B sweep (``entity/project/sweep_id``) or project (``entity/project``)
    through the W&B API (online, logged in); ``api`` lets tests pass a stand-in."""
    parts = path.strip("/").split("/")
    if len(parts) not in (2, 3):
        raise ReportError(f"--wandb {path!r}: give entity/project or entity/project/sweep_id")
    if api is None:
        import wandb

        api = wandb.Api()
    if len(parts) == 3:
        sweep = api.sweep("/".join(parts))
        runs, swept = list(sweep.runs), list((sweep.config or {}).get("parameters", {}))
    else:
        runs, swept = list(api.runs("/".join(parts))), []
    records = []
    for run in runs:
        config = dict(run.config)
        history: dict[str, list[Point]] = {}
        keys = [metric.name, *COST_KEYS]
        for row in run.scan_history(keys=[metric.name, "epoch", "trainer/global_step"]):
            value = row.get(metric.name)
            if isinstance(value, (int, float)) and math.isfinite(value):
                history.setdefault(metric.name, []).append(
                    Point(row.get("epoch"), row.get("trainer/global_step"), float(value)))
        summary = dict(run.summary)
        for key, value in summary.items():
            wanted = key in keys[1:] or (key.startswith("val/") and key != metric.name)
            if wanted and isinstance(value, (int, float)) and math.isfinite(value):
                history.setdefault(key, []).append(Point(None, None, float(value)))
        params = {}
        for name in swept:
            if name in config:
                params[name] = config[name]
            else:
                try:
                    params[name] = config_value(config, name)
                except KeyError:
                    params[name] = None
        records.append(RunRecord(name=run.name, params=params, status=_wandb_status(run.state),
                                 history=history, config=config))
    if not records:
        raise ReportError(f"--wandb {path}: no runs found")
    return records


def _wandb_status(state: str) -> str:
    return {"finished": "finished", "failed": "failed", "crashed": "failed",
            "killed": "failed", "running": "running"}.get(state, state)
