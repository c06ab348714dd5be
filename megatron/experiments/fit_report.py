"""Reading runs for a scaling-law fit, and its text and plots (``utils/fit_scaling_law.py``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from megatron.experiments.scaling_fit import Fit, isoflop_minima, optimal_allocation, power_law, predict_chinchilla


@dataclass(frozen=True, slots=True)
class Points:
    """The runs a fit uses: N, D (trained tokens), U (unique tokens, D if unset), loss, budget."""

    n: np.ndarray
    d: np.ndarray
    u: np.ndarray
    loss: np.ndarray
    budget: np.ndarray


def read_points(rows: list[dict[str, Any]], loss_column: str = "final_valid_loss") -> Points:
    """Finished runs with a loss, from ``sweep.csv`` rows (``results.read_csv``).

    The budget is the row's ``flops_budget`` (isoFLOP studies), else its 6ND.

    Raises:
        ValueError: A needed column is missing (named).
    """
    needed = ("num_parameters", "tokens", loss_column)
    if rows and any(c not in rows[0] for c in needed):
        missing = [c for c in needed if c not in rows[0]]
        raise ValueError(f"--runs: no column {missing[0]!r} (a sweep.csv of tools/sweep.py or tools/isoflop.py)")
    use = [r for r in rows if r.get("state", "done") == "done" and isinstance(r.get(loss_column), (int, float))
           and math.isfinite(r[loss_column])]
    n = np.array([float(r["num_parameters"]) for r in use])
    d = np.array([float(r["tokens"]) for r in use])
    u = np.array([float(r.get("unique_tokens") or r["tokens"]) for r in use])
    budget = np.array([float(r.get("flops_budget") or 6 * r["num_parameters"] * r["tokens"]) for r in use])
    return Points(n, d, u, np.array([float(r[loss_column]) for r in use]), budget)


def summary(fit: Fit, law: str, budgets: list[float]) -> str:
    """The fitted constants with intervals, and N_opt / D_opt at each budget."""
    def row(name: str, value: float) -> str:
        ci = fit.intervals.get(name)
        return f"  {name:>8} = {value:.6g}" + (f"   [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")

    p = fit.params
    lines = [f"{law} law on {fit.n_points} runs (Huber objective {fit.objective:.4g}); "
             f"95% bootstrap intervals in brackets" if fit.intervals else f"{law} law on {fit.n_points} runs",
             f"  L(N, D) = {math.exp(p['e']):.4g} + {math.exp(p['a']):.4g} / N^{p['alpha']:.4g} + "
             f"{math.exp(p['b']):.4g} / D^{p['beta']:.4g}"]
    lines += [row(k, v) for k, v in p.items()]
    a = p["beta"] / (p["alpha"] + p["beta"])
    lines.append(f"  N_opt(C) ~ C^{a:.3f}, D_opt(C) ~ C^{1 - a:.3f}")
    if "alpha" in fit.samples and fit.samples["alpha"]:
        exps = [b / (al + b) for al, b in zip(fit.samples["alpha"], fit.samples["beta"], strict=True)]
        lines[-1] += f"   (N exponent [{np.percentile(exps, 2.5):.3f}, {np.percentile(exps, 97.5):.3f}])"
    for c in budgets:
        n_opt, d_opt = optimal_allocation(p, c)
        lines.append(f"  C = {c:.3g}: N_opt = {float(n_opt):,.0f}, D_opt = {float(d_opt):,.0f} "
                     f"({float(d_opt) / float(n_opt):.1f} tokens/parameter)")
    return "\n".join(lines)


def isoflop_summary(points: Points) -> tuple[str, dict[float, tuple[float, np.ndarray]]]:
    """The parabola minima per budget (Approach 2) and the N*(C) power law through them."""
    groups = {b: (points.n[points.budget == b], points.loss[points.budget == b]) for b in np.unique(points.budget)}
    minima = isoflop_minima(groups)
    lines = [f"  C = {b:.3g}: parabola minimum N* = {m[0]:,.0f}" for b, m in sorted(minima.items())]
    if len(minima) >= 2:
        k, exp = power_law(np.array(sorted(minima)), np.array([minima[b][0] for b in sorted(minima)]))
        lines.append(f"  N*(C) = {k:.3g} C^{exp:.3f} (through the {len(minima)} minima)")
    return "\n".join(["isoFLOP parabolas (loss vs log N per budget):", *lines]), minima


def plot(points: Points, fit: Fit, predict, path: str,  # noqa: ANN001
         minima: dict[float, tuple[float, np.ndarray]]) -> str:
    """Two panels: the law against the points (predicted vs observed loss), and the isoFLOP
    curves (points, parabolas with their minima, the law's prediction at each budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    pred = predict(points)
    ax1.scatter(points.loss, pred, c=np.log10(points.budget), cmap="viridis")
    lo, hi = float(min(points.loss.min(), pred.min())), float(max(points.loss.max(), pred.max()))
    ax1.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax1.set_xlabel("observed validation loss")
    ax1.set_ylabel("fitted law")
    ax1.set_title("fit vs runs")
    colors = plt.cm.viridis(np.linspace(0, 1, max(1, len(np.unique(points.budget)))))
    for color, budget in zip(colors, np.unique(points.budget), strict=True):
        sel = points.budget == budget
        ax2.scatter(points.n[sel], points.loss[sel], color=color, label=f"C={budget:.2g}")
        grid = np.logspace(np.log10(points.n[sel].min()) - 0.2, np.log10(points.n[sel].max()) + 0.2, 60)
        ax2.plot(grid, predict_chinchilla(fit.params, grid, budget / (6 * grid)), color=color, ls=":", lw=1)
        if budget in minima:
            n_star, coef = minima[budget]
            ax2.plot(grid, np.polyval(coef, np.log(grid)), color=color, lw=1)
            ax2.axvline(n_star, color=color, ls="--", lw=0.8)
    ax2.set_xscale("log")
    ax2.set_xlabel("parameters N")
    ax2.set_ylabel("validation loss")
    ax2.set_title("isoFLOP: parabolas (solid), law (dotted)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
