"""Fitting scaling laws to one's own runs (numpy + scipy; torch-free).

Chinchilla form (Hoffmann et al. 2022, Approach 3)::

    L(N, D) = E + A / N^alpha + B / D^beta,   log L = LSE(a - alpha log N, b - beta log D, e)

with A = e^a, B = e^b, E = e^e, fitted by minimizing the Huber loss (delta 1e-3) between
predicted and observed log-loss with L-BFGS from every start of a grid, keeping the best.
Compute-optimal allocation under C = 6 N D::

    N_opt(C) = G (C/6)^(beta/(alpha+beta)),  D_opt(C) = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta))

Data-constrained form (Muennighoff et al. 2023): N and D become the effective N' and D' of
repeated data (``utils/data_constrained_law.py``); the Chinchilla constants are fitted on the
single-epoch runs first, then R_D* and R_N* (as log R*) on all runs with those fixed.
Uncertainty: refits on bootstrap resamples of the runs, percentile intervals.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

HUBER_DELTA = 1e-3
CHINCHILLA_NAMES = ("a", "b", "e", "alpha", "beta")
INIT_GRID = {
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
"""Hoffmann et al.'s grid of starting points (4,500 starts)."""
COARSE_GRID = {"a": (0.0, 10.0, 20.0), "b": (0.0, 10.0, 20.0), "e": (-1.0, 0.0, 1.0),
               "alpha": (0.25, 0.75), "beta": (0.25, 0.75)}
"""A 108-start subset of the grid: the default (the full grid takes minutes)."""
LBFGS_OPTIONS = {"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000}
"""Tight tolerances: with delta = 1e-3 the Huber gradients are tiny, and scipy's defaults stop
L-BFGS long before the optimum (Besiroglu et al. 2024 traced a published fit's too-narrow
intervals to that)."""


@dataclass(frozen=True, slots=True)
class Fit:
    """A fitted law.

    Attributes:
        params: ``a, b, e, alpha, beta`` (and ``rd_star, rn_star`` for the data-constrained law).
        objective: The Huber loss at the optimum (summed over points).
        n_points: Points it was fitted on.
        intervals: Name -> (low, high) bootstrap percentile interval (empty without bootstrap).
        samples: Name -> the bootstrap estimates.
    """

    params: dict[str, float]
    objective: float
    n_points: int
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)


def huber(residual: np.ndarray, delta: float = HUBER_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of each residual and its derivative."""
    small = np.abs(residual) <= delta
    value = np.where(small, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta))
    grad = np.where(small, residual, delta * np.sign(residual))
    return value, grad


def chinchilla_log_loss(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """log L = LSE(a - alpha log N, b - beta log D, e) for theta = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    return np.logaddexp.reduce(terms, axis=0)


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    lse = np.logaddexp.reduce(terms, axis=0)
    weights = np.exp(terms - lse)  # softmax: d lse / d term
    value, dres = huber(lse - log_l, delta)
    grad = np.array([
        np.sum(dres * weights[0]), np.sum(dres * weights[1]), np.sum(dres * weights[2]),
        np.sum(dres * weights[0] * -log_n), np.sum(dres * weights[1] * -log_d)])
    return float(np.sum(value)), grad


def _minimize(starts: list[np.ndarray], fun, args: tuple) -> tuple[np.ndarray, float]:  # noqa: ANN001
    from scipy.optimize import minimize

    best, best_value = None, np.inf
    for start in starts:
        res = minimize(fun, start, args=args, jac=True, method="L-BFGS-B", options=LBFGS_OPTIONS)
        if np.isfinite(res.fun) and res.fun < best_value:
            best, best_value = res.x, float(res.fun)
    if best is None:
        raise ValueError("the fit did not converge from any start")
    return best, best_value


def grid_starts(grid: dict[str, tuple[float, ...]] | None = None) -> list[np.ndarray]:
    """The starting points: the product of the grid's values (Hoffmann et al.'s by default)."""
    grid = grid or COARSE_GRID
    return [np.array(p, dtype=float) for p in itertools.product(*(grid[k] for k in CHINCHILLA_NAMES))]


def fit_chinchilla(n: np.ndarray, d: np.ndarray, loss: np.ndarray, *, starts: list[np.ndarray] | None = None,
                   delta: float = HUBER_DELTA) -> Fit:
    """Fit E + A/N^alpha + B/D^beta to (N, D, L) points.

    Raises:
        ValueError: Fewer than 5 points, or non-positive values.
    """
    n, d, loss = (np.asarray(x, dtype=float) for x in (n, d, loss))
    if len(loss) < 5:
        raise ValueError(f"--runs: {len(loss)} usable runs; the law has 5 parameters, give at least 5")
    if np.any(n <= 0) or np.any(d <= 0) or np.any(loss <= 0):
        raise ValueError("--runs: parameters, tokens and losses must be positive")
    theta, value = _minimize(starts or grid_starts(), _objective, (np.log(n), np.log(d), np.log(loss), delta))
    return Fit(dict(zip(CHINCHILLA_NAMES, map(float, theta), strict=True)), value, len(loss))


def predict_chinchilla(params: dict[str, float], n, d) -> np.ndarray:  # noqa: ANN001
    """L(N, D) of a fitted Chinchilla law."""
    theta = np.array([params[k] for k in CHINCHILLA_NAMES])
    return np.exp(chinchilla_log_loss(theta, np.log(np.asarray(n, float)), np.log(np.asarray(d, float))))


def optimal_allocation(params: dict[str, float], flops) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(N_opt(C), D_opt(C)) of the law under C = 6 N D."""
    a, b, alpha, beta = params["a"], params["b"], params["alpha"], params["beta"]
    g = (alpha * np.exp(a) / (beta * np.exp(b))) ** (1.0 / (alpha + beta))
    c6 = np.asarray(flops, dtype=float) / 6.0
    return g * c6 ** (beta / (alpha + beta)), c6 ** (alpha / (alpha + beta)) / g


def effective_data(d, u, rd_star):  # noqa: ANN001, ANN201
    """D' = U + U R_D* (1 - exp(-R_D / R_D*)), R_D = max(D/U - 1, 0) (elementwise)."""
    d, u = np.asarray(d, float), np.asarray(u, float)
    repeats = np.maximum(d / u - 1.0, 0.0)
    return u + u * rd_star * (1.0 - np.exp(-repeats / rd_star))


def effective_params(n, u, params: dict[str, float]):  # noqa: ANN001, ANN201
    """N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)), U_N = min(N, N_opt(U)) (elementwise)."""
    n = np.asarray(n, float)
    a, b, alpha, beta = params["a"], params["b"], params["alpha"], params["beta"]
    g = (alpha * np.exp(a) / (beta * np.exp(b))) ** (1.0 / (alpha + beta))
    base = np.minimum(n, (np.asarray(u, float) * g) ** (beta / alpha) * g)
    excess = np.maximum(n / base - 1.0, 0.0)
    return base + base * params["rn_star"] * (1.0 - np.exp(-excess / params["rn_star"]))


def predict_data_constrained(params: dict[str, float], n, d, u) -> np.ndarray:  # noqa: ANN001
    """L(N, D, U) = E + A / N'^alpha + B / D'^beta."""
    n_eff = effective_params(n, u, params)
    d_eff = effective_data(d, u, params["rd_star"])
    return (np.exp(params["e"]) + np.exp(params["a"]) / n_eff ** params["alpha"]
            + np.exp(params["b"]) / d_eff ** params["beta"])


def fit_data_constrained(n, d, u, loss, *, starts: list[np.ndarray] | None = None,  # noqa: ANN001
                         delta: float = HUBER_DELTA) -> Fit:
    """The two-step fit: Chinchilla constants on the runs with D <= U (one epoch at most), then
    log R_D* and log R_N* on all runs with those fixed (Huber on log-loss, a grid of starts).

    Raises:
        ValueError: Fewer than 5 single-epoch runs or no repeated ones.
    """
    from scipy.optimize import minimize

    n, d, u, loss = (np.asarray(x, dtype=float) for x in (n, d, u, loss))
    single = d <= u * (1 + 1e-9)
    if single.sum() < 5 or single.all():
        raise ValueError(f"--law data-constrained: needs >= 5 single-epoch runs and some repeated ones "
                         f"(have {int(single.sum())} and {int((~single).sum())})")
    base = fit_chinchilla(n[single], d[single], loss[single], starts=starts, delta=delta)

    def objective(x: np.ndarray) -> float:
        params = {**base.params, "rd_star": float(np.exp(x[0])), "rn_star": float(np.exp(x[1]))}
        value, _ = huber(np.log(predict_data_constrained(params, n, d, u)) - np.log(loss), delta)
        return float(np.sum(value))

    # Two parameters and a kinked objective: Nelder-Mead from each start (finite-difference
    # L-BFGS stalls on the tiny Huber gradients).
    best = min((minimize(objective, np.array(s), method="Nelder-Mead",
                         options={"xatol": 1e-10, "fatol": 1e-16, "maxiter": 4000}) for s in
                itertools.product(np.log([1.0, 5.0, 15.0, 50.0, 500.0]), np.log([1.0, 5.0, 50.0]))),
               key=lambda r: r.fun)
    params = {**base.params, "rd_star": float(np.exp(best.x[0])), "rn_star": float(np.exp(best.x[1]))}
    return Fit(params, float(best.fun), len(loss))


def bootstrap(fit_fn, columns: list[np.ndarray], fit: Fit, *, samples: int = 100, seed: int = 0,  # noqa: ANN001
              level: float = 0.95) -> Fit:
    """``fit`` with percentile intervals from refits on ``samples`` resamples of the points.

    Each refit starts from the full fit's optimum and a few grid points (not the whole grid).
    """
    rng = np.random.default_rng(seed)
    count = len(columns[0])
    start = np.array([fit.params[k] for k in CHINCHILLA_NAMES])
    starts = [start, *grid_starts({"a": (5.0, 15.0), "b": (5.0, 15.0), "e": (0.0,), "alpha": (0.5,), "beta": (0.5,)})]
    draws: dict[str, list[float]] = {k: [] for k in fit.params}
    for _ in range(samples):
        pick = rng.integers(0, count, count)
        try:
            refit = fit_fn(*(c[pick] for c in columns), starts=starts)
        except ValueError:
            continue
        for k, v in refit.params.items():
            draws[k].append(v)
    tail = (1 - level) / 2 * 100
    intervals = {k: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail)))
                 for k, v in draws.items() if v}
    return Fit(fit.params, fit.objective, fit.n_points, intervals, draws)


def isoflop_minima(groups: dict[float, tuple[np.ndarray, np.ndarray]]) -> dict[float, tuple[float, np.ndarray]]:
    """Per budget, the parabola in log N through (N, L) and its minimum N* (Approach 2).

    Returns:
        Budget -> (N*, the parabola's coefficients in log N); budgets with fewer than 3 sizes or
        a parabola opening downwards are left out.
    """
    out = {}
    for budget, (n, loss) in groups.items():
        if len(n) < 3:
            continue
        coef = np.polyfit(np.log(n), loss, 2)
        if coef[0] <= 0:
            continue
        out[budget] = (float(np.exp(-coef[1] / (2 * coef[0]))), coef)
    return out


def power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(k, exponent) of y = k x^exponent by least squares in log-log."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(np.exp(intercept)), float(slope)
