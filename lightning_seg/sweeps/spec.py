"""Sweep files: Weights & Biases' sweep format plus the experiment the sweep applies to.

A sweep file (``experiments/sweeps/*.yaml``)::

    experiment: experiments/fcn8s_vgg16_shapes_30e.yaml   # relative to the repository root
    method: grid                                            # grid | random | bayes
    metric: {name: val/score, goal: maximize}
    run_cap: 20                                             # trial budget (random / bayes)
    parameters:
      model.init_args.model.init_args.variant: {values: ["32s", "16s", "8s"]}
      model.init_args.optimizer.init_args.lr: {distribution: log_uniform_values, min: 1e-4, max: 1e-2}
      trainer.max_epochs: {value: 5}

Parameter names are ``lseg`` argument paths: a trial runs ``lseg fit --config EXPERIMENT
--<name>=<value> ...``. One name is special: ``experiment`` swaps the whole experiment file
(e.g. one sweep across the DeepLab lineage, each a complete experiment); with it the top-level
``experiment`` may be left out.

Parameters follow W&B: ``value`` (constant), ``values`` (categorical, optional
``probabilities``), or a ``distribution`` with its bounds (``min`` / ``max``, ``mu`` / ``sigma``,
``q``). Without ``distribution`` the kind is inferred as W&B does (``values`` -> categorical,
integer ``min``/``max`` -> ``int_uniform``, float ones -> ``uniform``). ``log_uniform`` takes
``min`` / ``max`` as natural-log exponents (W&B's meaning); ``log_uniform_values`` takes the
values themselves.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_seg.errors import UserError

METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
EXPERIMENT_PARAM = "experiment"
#: keys of a sweep file: ours (``experiment``) and those of W&B's sweep format we pass on
SWEEP_KEYS = ("experiment", "method", "metric", "parameters", "run_cap", "name", "description",
              "early_terminate", "project", "entity")
DISTRIBUTIONS = (
    "constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform",
    "log_uniform_values", "q_log_uniform_values", "normal", "q_normal", "log_normal",
)
#: distributions with a finite set of values (the only ones a grid can take)
DISCRETE = ("constant", "categorical")


class SweepError(UserError, ValueError):
    """A sweep file or sweep folder that cannot be used as it is; the message says why."""


@dataclass(frozen=True)
class Parameter:
    """One swept parameter.

    Attributes:
        name: the ``lseg`` argument path (``model.init_args.model.init_args.variant``) or
            ``experiment``.
        distribution: one of ``DISTRIBUTIONS``.
        values: the choices of ``categorical`` (one entry for ``constant``).
        probabilities: optional weights of ``values`` for random / bayes sampling.
        min, max: bounds of the uniform kinds (exponents for ``log_uniform``).
        mu, sigma: of the normal kinds.
        q: quantisation step of the ``q_`` kinds.
    """

    name: str
    distribution: str
    values: tuple = ()
    probabilities: tuple[float, ...] | None = None
    min: float | None = None
    max: float | None = None
    mu: float = 0.0
    sigma: float = 1.0
    q: float | None = None

    @property
    def is_discrete(self) -> bool:
        return self.distribution in DISCRETE


@dataclass(frozen=True)
class Metric:
    """What a sweep optimises: a logged metric (``val/score``) and whether higher is better."""

    name: str = "val/score"
    goal: str = "maximize"

    def better(self, a: float, b: float) -> bool:
        """Whether value ``a`` is better than ``b``."""
        return a > b if self.goal == "maximize" else a < b


@dataclass
class SweepSpec:
    """A parsed, checked sweep file.

    Attributes:
        path: the sweep file.
        root: the repository root (the folder the experiment paths are relative to; trials
            run there so that ``experiments/defaults.yaml`` is found).
        name: the sweep's name (``name:`` in the file, else the file's stem).
        experiment: the experiment file, relative to ``root`` (None when a parameter sweeps
            ``experiment``).
        method: ``grid``, ``random`` or ``bayes``.
        metric: the metric to optimise and report first.
        parameters: the parameters, in file order.
        run_cap: the trial budget given in the file, or None.
        raw: the file's content as loaded.
    """

    path: Path
    root: Path
    name: str
    experiment: str | None
    method: str
    metric: Metric
    parameters: list[Parameter]
    run_cap: int | None = None
    raw: dict = field(default_factory=dict)

    @property
    def swept(self) -> list[Parameter]:
        """Parameters that take more than one value (the columns of a report)."""
        return [p for p in self.parameters if p.distribution != "constant"]

    def experiments(self) -> list[str]:
        """Every experiment file a trial of this sweep may use."""
        for p in self.parameters:
            if p.name == EXPERIMENT_PARAM:
                return [str(v) for v in p.values]
        return [self.experiment] if self.experiment else []

    def fingerprint(self) -> str:
        """Hash of what defines the trials (experiment, method, metric, parameters), so a
        sweep folder can tell whether the file changed since it was started."""
        keys = {k: self.raw.get(k) for k in ("experiment", "method", "metric", "parameters")}
        text = json.dumps(keys, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ loading
def load_sweep(path: str | Path, root: str | Path | None = None) -> SweepSpec:
    """Read and check a sweep file.

    Args:
        path: the sweep file.
        root: the repository root; None: the nearest folder above the sweep file (or the
            working directory) in which the experiment paths exist.

    Raises:
        SweepError: naming the file, the key and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: no such sweep file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with experiment, method, metric and parameters")
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {unknown}; a sweep file has {list(SWEEP_KEYS)}")
    method = raw.get("method", "grid")
    if method not in METHODS:
        raise SweepError(f"{path}: method must be one of {list(METHODS)}, got {method!r}")
    metric = _metric(path, raw.get("metric"))
    params_raw = raw.get("parameters")
    if not isinstance(params_raw, dict) or not params_raw:
        raise SweepError(f"{path}: 'parameters' must map lseg argument paths to their values")
    parameters = [_parameter(path, name, spec) for name, spec in params_raw.items()]
    names = {p.name for p in parameters}
    experiment = raw.get("experiment")
    if experiment is None and EXPERIMENT_PARAM not in names:
        raise SweepError(
            f"{path}: no 'experiment' (the experiment file the sweep applies to, relative to the "
            f"repository root, e.g. experiment: experiments/quickstart.yaml)"
        )
    if experiment is not None and not isinstance(experiment, str):
        raise SweepError(f"{path}: 'experiment' must be a path, got {experiment!r}")
    if method == "grid":
        continuous = [p.name for p in parameters if not p.is_discrete]
        if continuous:
            raise SweepError(
                f"{path}: a grid takes only 'values' / 'value' parameters; {continuous} have a "
                f"distribution: list their values or use method: random / bayes"
            )
    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        raise SweepError(f"{path}: run_cap must be a positive integer, got {run_cap!r}")
    spec = SweepSpec(
        path=path,
        root=Path("."),
        name=str(raw.get("name") or path.stem),
        experiment=experiment,
        method=method,
        metric=metric,
        parameters=parameters,
        run_cap=run_cap,
        raw=raw,
    )
    spec.root = Path(root).resolve() if root is not None else find_root(spec)
    for exp in spec.experiments():
        if not (spec.root / exp).is_file():
            raise SweepError(
                f"{path}: experiment {exp!r} not found under {spec.root} (experiment paths are "
                f"relative to the repository root; run lseg sweep from there)"
            )
    return spec


def find_root(spec: SweepSpec) -> Path:
    """The repository root of a sweep: the working directory when the experiments are found
    from there, else the nearest folder above the sweep file where they are."""
    experiments = spec.experiments()
    candidates = [Path.cwd(), *spec.path.resolve().parents]
    for folder in candidates:
        if all((folder / e).is_file() for e in experiments):
            return folder.resolve()
    return Path.cwd().resolve()


def _metric(path: Path, raw: Any) -> Metric:
    if raw is None:
        return Metric()
    if not isinstance(raw, dict) or "name" not in raw:
        raise SweepError(f"{path}: metric must be {{name: val/score, goal: maximize}}, got {raw!r}")
    goal = raw.get("goal", "maximize")
    if goal not in GOALS:
        raise SweepError(f"{path}: metric goal must be one of {list(GOALS)}, got {goal!r}")
    return Metric(str(raw["name"]), goal)


def _parameter(path: Path, name: Any, raw: Any) -> Parameter:
    where = f"{path}: parameter {name!r}"
    if not isinstance(name, str) or not name or name.startswith("-") or " " in name:
        raise SweepError(f"{where}: names are lseg argument paths without dashes, e.g. trainer.max_epochs")
    if not isinstance(raw, dict):
        raise SweepError(f"{where}: give {{values: [...]}}, {{value: x}} or a distribution with min / max")
    if "parameters" in raw:
        raise SweepError(f"{where}: nested parameters are not used here; write each leaf as one "
                         f"dotted lseg argument path (model.init_args.optimizer.init_args.lr)")
    known = {"value", "values", "probabilities", "distribution", "min", "max", "mu", "sigma", "q"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {unknown}; a parameter has {sorted(known)}")
    dist = raw.get("distribution") or _infer_distribution(where, raw)
    if dist not in DISTRIBUTIONS:
        raise SweepError(f"{where}: distribution {dist!r} is not supported; use one of {list(DISTRIBUTIONS)}")
    if name == EXPERIMENT_PARAM and dist not in DISCRETE:
        raise SweepError(f"{where}: list the experiment files with values: [...]")
    if dist == "constant":
        if "value" not in raw:
            raise SweepError(f"{where}: a constant needs 'value'")
        return Parameter(name, dist, values=(raw["value"],))
    if dist == "categorical":
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: 'values' must be a non-empty list")
        probs = raw.get("probabilities")
        if probs is not None:
            if (not isinstance(probs, list) or len(probs) != len(values)
                    or any(not isinstance(p, (int, float)) or p < 0 for p in probs) or sum(probs) <= 0):
                raise SweepError(f"{where}: 'probabilities' must be one non-negative number per value")
            probs = tuple(float(p) / sum(probs) for p in probs)
        return Parameter(name, dist, values=tuple(values), probabilities=probs)
    if dist in ("normal", "q_normal", "log_normal"):
        mu, sigma = raw.get("mu", 0.0), raw.get("sigma", 1.0)
        if not _is_number(mu) or not _is_number(sigma) or sigma <= 0:
            raise SweepError(f"{where}: {dist} needs a number mu and a positive sigma")
        return Parameter(name, dist, mu=float(mu), sigma=float(sigma), q=_q(where, dist, raw))
    lo, hi = raw.get("min"), raw.get("max")
    if not _is_number(lo) or not _is_number(hi) or not lo < hi:
        raise SweepError(f"{where}: {dist} needs numbers min < max, got min={lo!r} max={hi!r}")
    if dist in ("log_uniform_values", "q_log_uniform_values") and lo <= 0:
        raise SweepError(f"{where}: {dist} needs min > 0 (the values themselves; log_uniform takes exponents)")
    if dist == "int_uniform" and not (isinstance(lo, int) and isinstance(hi, int)):
        raise SweepError(f"{where}: int_uniform needs integer min and max")
    return Parameter(name, dist, min=lo, max=hi, q=_q(where, dist, raw))


def _q(where: str, dist: str, raw: dict) -> float | None:
    if not dist.startswith("q_"):
        return None
    q = raw.get("q", 1.0)
    if not _is_number(q) or q <= 0:
        raise SweepError(f"{where}: q must be a positive number")
    return float(q)


def _infer_distribution(where: str, raw: dict) -> str:
    if "values" in raw:
        return "categorical"
    if "value" in raw:
        return "constant"
    lo, hi = raw.get("min"), raw.get("max")
    if isinstance(lo, int) and isinstance(hi, int) and not isinstance(lo, bool):
        return "int_uniform"
    if _is_number(lo) and _is_number(hi):
        return "uniform"
    raise SweepError(f"{where}: give values, value, or min / max (and a distribution)")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ------------------------------------------------------------------ command-line form
def format_value(value: Any) -> str:
    """A value as ``lseg`` reads it after ``--name=``: YAML that loads back to ``value``
    (strings that YAML would read as another type are quoted; ``1e-05`` becomes ``1.0e-05``,
    which YAML 1.1 reads as a float)."""
    if isinstance(value, str) and value and value == _yaml_scalar(value):
        return value
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def _yaml_scalar(value: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return None


def param_args(name: str, value: Any) -> list[str]:
    """``lseg`` arguments setting one parameter: ``--name=value``, or for ``null`` an inline
    ``--config`` holding it (jsonargparse does not take ``null`` for a nested argument on the
    command line, e.g. ``aspp_rates: Sequence[int] | None``; from a config it does)."""
    if value is None:
        nested: Any = None
        for part in reversed(name.split(".")):
            nested = {part: nested}
        return ["--config", json.dumps(nested, separators=(",", ":"))]
    return [f"--{name}={format_value(value)}"]


def override_args(params: dict[str, Any]) -> list[str]:
    """``lseg`` arguments of a trial's parameters, in order (``experiment`` is not one)."""
    return [arg for name, value in params.items() if name != EXPERIMENT_PARAM for arg in param_args(name, value)]


def trial_experiment(spec: SweepSpec, params: dict[str, Any]) -> str:
    """The experiment file of a trial (its ``experiment`` parameter, else the sweep's)."""
    value = params.get(EXPERIMENT_PARAM, spec.experiment)
    if value is None:  # load_sweep guarantees one of them
        raise SweepError(f"{spec.path}: no experiment for trial parameters {params}")
    return str(value)


def short_names(names: list[str]) -> dict[str, str]:
    """Readable column names of parameter paths: the last path component without
    ``init_args``, lengthened from the right until the names are unique."""
    def parts(name: str) -> list[str]:
        return [p for p in name.split(".") if p != "init_args"]

    out: dict[str, str] = {}
    depth = {n: 1 for n in names}
    while True:
        out = {n: ".".join(parts(n)[-depth[n]:]) for n in names}
        clashes = {s for s in out.values() if list(out.values()).count(s) > 1}
        if not clashes:
            return out
        grew = False
        for n in names:
            if out[n] in clashes and depth[n] < len(parts(n)):
                depth[n] += 1
                grew = True
        if not grew:
            return {n: n for n in names}
