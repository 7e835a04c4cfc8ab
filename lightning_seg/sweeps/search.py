"""Which trials a sweep runs: the grid, random samples, and Bayesian optimisation.

- **grid**: every combination of the ``values``, the first parameter varying slowest (file
  order), as W&B's grid.
- **random**: each parameter drawn independently from its distribution (seeded: the same
  sweep folder draws the same trials).
- **bayes**: Gaussian-process expected improvement, written here in NumPy (no extra
  dependency). Parameters are mapped to the unit cube (log scale for the log kinds, one-hot for
  categorical values); the first ``num_initial`` trials are random; after that a GP with a
  Matern-5/2 kernel (length scale and noise chosen by marginal likelihood from a small grid) is
  fitted to the finished trials' standardised results, and the next trial is the best of
  ``num_candidates`` random candidates by expected improvement. Trials still running count as
  observed at the mean of the results so far (the "constant liar"), so ``--parallel N`` does
  not propose the same point N times. Failed trials are left out. It is the method of Snoek
  et al., "Practical Bayesian Optimization of Machine Learning Algorithms" (NeurIPS 2012), in
  its simplest form; W&B's own ``bayes`` runs instead with ``--backend wandb``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_seg.sweeps.spec import Metric, Parameter, SweepSpec


def grid(parameters: Sequence[Parameter]) -> list[dict[str, Any]]:
    """Every combination of the parameters' values (all must be discrete)."""
    names = [p.name for p in parameters]
    choices = [list(p.values) for p in parameters]
    return [dict(zip(names, combo)) for combo in itertools.product(*choices)]


def sample(parameter: Parameter, rng: np.random.Generator) -> Any:
    """One value of a parameter drawn from its distribution."""
    d = parameter.distribution
    if d == "constant":
        return parameter.values[0]
    if d == "categorical":
        i = int(rng.choice(len(parameter.values), p=parameter.probabilities))
        return parameter.values[i]
    return from_unit(parameter, float(rng.random()))


def from_unit(parameter: Parameter, u: float) -> Any:
    """The value of a continuous parameter at quantile-like position ``u`` in [0, 1]
    (the inverse of ``to_unit``): uniform in the parameter's own scale."""
    d, lo, hi, q = parameter.distribution, parameter.min, parameter.max, parameter.q
    u = min(max(u, 0.0), 1.0)
    if d == "int_uniform":
        return int(min(hi, lo + math.floor(u * (hi - lo + 1))))
    if d in ("uniform", "q_uniform"):
        x = lo + u * (hi - lo)
    elif d == "log_uniform":
        x = math.exp(lo + u * (hi - lo))
    elif d in ("log_uniform_values", "q_log_uniform_values"):
        x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    else:  # normal kinds: u is the normal CDF
        z = _norm_ppf(min(max(u, 1e-6), 1 - 1e-6))
        x = parameter.mu + parameter.sigma * z
        if d == "log_normal":
            x = math.exp(x)
    if q is not None:
        x = round(x / q) * q
        return int(x) if float(q).is_integer() and float(x).is_integer() else x
    return float(x)


def to_unit(parameter: Parameter, value: Any) -> float:
    """Position of a continuous value in [0, 1] (the inverse of ``from_unit``)."""
    d, lo, hi = parameter.distribution, parameter.min, parameter.max
    x = float(value)
    if d == "int_uniform":
        return (x - lo + 0.5) / (hi - lo + 1)
    if d in ("uniform", "q_uniform"):
        return (x - lo) / (hi - lo)
    if d == "log_uniform":
        return (math.log(x) - lo) / (hi - lo)
    if d in ("log_uniform_values", "q_log_uniform_values"):
        return (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
    if d == "log_normal":
        x = math.log(x)
    return _norm_cdf((x - parameter.mu) / parameter.sigma)


def random_trials(spec: SweepSpec, count: int, seed: int, start: int = 0) -> list[dict[str, Any]]:
    """Trials ``start .. count - 1`` of a random sweep; trial ``i`` depends only on
    ``(seed, i)``, so a resumed sweep draws the same ones."""
    out = []
    for i in range(start, count):
        rng = np.random.default_rng([seed, i])
        out.append({p.name: sample(p, rng) for p in spec.parameters})
    return out


# ------------------------------------------------------------------ Bayesian optimisation
class Encoder:
    """Maps parameter values to points of the unit cube: one coordinate per continuous
    parameter, one per value (one-hot) of a categorical one; constants take none."""

    def __init__(self, parameters: Sequence[Parameter]) -> None:
        self.parameters = list(parameters)

    @property
    def dims(self) -> int:
        return sum(self._width(p) for p in self.parameters)

    @staticmethod
    def _width(p: Parameter) -> int:
        if p.distribution == "constant":
            return 0
        return len(p.values) if p.distribution == "categorical" else 1

    def encode(self, params: dict[str, Any]) -> np.ndarray:
        """``Tensor[D]``-like NumPy vector of a trial's parameters."""
        out: list[float] = []
        for p in self.parameters:
            if p.distribution == "constant":
                continue
            value = params[p.name]
            if p.distribution == "categorical":
                hot = [0.0] * len(p.values)
                hot[_index(p.values, value)] = 1.0
                out += hot
            else:
                out.append(to_unit(p, value))
        return np.asarray(out, dtype=np.float64)


def _index(values: Sequence, value: Any) -> int:
    for i, v in enumerate(values):
        if v == value and type(v) is type(value):
            return i
    for i, v in enumerate(values):
        if v == value:
            return i
    raise ValueError(f"{value!r} is not one of {list(values)}")


def _matern52(a: np.ndarray, b: np.ndarray, length: float) -> np.ndarray:
    """Matern-5/2 kernel matrix ``[len(a), len(b)]`` with unit variance."""
    d = np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0)) / length
    s5 = math.sqrt(5.0)
    return (1 + s5 * d + 5.0 / 3.0 * d**2) * np.exp(-s5 * d)


class GaussianProcess:
    """A GP regressor on standardised targets, hyper-parameters by marginal likelihood."""

    LENGTHS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
    NOISES = (1e-6, 1e-3, 1e-2, 1e-1)

    def fit(self, x: np.ndarray, y: np.ndarray) -> GaussianProcess:
        """Args:
            x: ``[N, D]`` points. y: ``[N]`` targets (higher is better).
        """
        self.x = x
        self.mean = float(y.mean())
        self.std = float(y.std()) or 1.0
        self.y = (y - self.mean) / self.std
        best = None
        for length in self.LENGTHS:
            for noise in self.NOISES:
                k = _matern52(x, x, length) + noise * np.eye(len(x))
                try:
                    chol = np.linalg.cholesky(k)
                except np.linalg.LinAlgError:
                    continue
                alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, self.y))
                nll = 0.5 * self.y @ alpha + np.log(np.diag(chol)).sum()
                if best is None or nll < best[0]:
                    best = (nll, length, chol, alpha)
        if best is None:
            raise np.linalg.LinAlgError("no kernel setting gave a positive-definite matrix")
        _, self.length, self.chol, self.alpha = best
        return self

    def predict(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation ``[M]`` at ``xs [M, D]`` (standardised units)."""
        ks = _matern52(xs, self.x, self.length)
        mu = ks @ self.alpha
        v = np.linalg.solve(self.chol, ks.T)
        var = np.maximum(1.0 - (v**2).sum(0), 1e-12)
        return mu, np.sqrt(var)


def expected_improvement(mu: np.ndarray, sigma: np.ndarray, best: float, xi: float = 0.01) -> np.ndarray:
    """EI of maximising, for a normal posterior ``(mu, sigma)`` and the best value so far."""
    z = (mu - best - xi) / sigma
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return (mu - best - xi) * cdf + sigma * pdf


def bayes_next(
    spec: SweepSpec,
    observed: Sequence[tuple[dict[str, Any], float]],
    pending: Sequence[dict[str, Any]],
    seed: int,
    index: int,
    num_initial: int | None = None,
    num_candidates: int = 2000,
) -> dict[str, Any]:
    """The next trial of a ``bayes`` sweep.

    Args:
        spec: the sweep.
        observed: ``(parameters, metric value)`` of the finished trials.
        pending: parameters of the trials still running.
        seed, index: the sweep's seed and this trial's index (the random draws depend on them).
        num_initial: random trials before the GP takes over (default: max(3, D + 1)).
        num_candidates: random candidates scored by expected improvement.
    """
    encoder = Encoder(spec.parameters)
    rng = np.random.default_rng([seed, index, 1])
    if num_initial is None:
        num_initial = max(3, encoder.dims + 1)
    if len(observed) < num_initial or encoder.dims == 0:
        return {p.name: sample(p, rng) for p in spec.parameters}
    sign = 1.0 if spec.metric.goal == "maximize" else -1.0
    x = np.stack([encoder.encode(p) for p, _ in observed])
    y = sign * np.asarray([v for _, v in observed], dtype=np.float64)
    if pending:
        x = np.concatenate([x, np.stack([encoder.encode(p) for p in pending])])
        y = np.concatenate([y, np.full(len(pending), y.mean())])
    gp = GaussianProcess().fit(x, y)
    candidates = [{p.name: sample(p, rng) for p in spec.parameters} for _ in range(num_candidates)]
    xs = np.stack([encoder.encode(c) for c in candidates])
    mu, sigma = gp.predict(xs)
    ei = expected_improvement(mu, sigma, float(gp.y[: len(observed)].max()))
    return candidates[int(np.argmax(ei))]


def observed_value(metric: Metric, result: dict | None) -> float | None:
    """The value a finished trial contributes to the search: its best ``metric``."""
    if not result:
        return None
    value = result.get("best")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


# ------------------------------------------------------------------ normal distribution
def _norm_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _norm_ppf(p: float) -> float:
    """Inverse of the standard normal CDF (bisection on ``erf``; exact to 1e-10)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _norm_cdf(mid) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
