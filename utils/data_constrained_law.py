#!/usr/bin/env python3
"""The data-constrained scaling law: loss of N parameters trained on D tokens of which U unique.

    python utils/data_constrained_law.py --params 6.34e9 --tokens 242e9 --unique-tokens 25e9
    python utils/data_constrained_law.py --params 100M --unique-tokens 100M --objective mdm

Muennighoff et al., "Scaling Data-Constrained Language Models" (arXiv 2305.16264; constants of
huggingface/datablations, README "Parametric Fit", fitted on C4 with autoregressive models):

    L(N, D, U) = E + A / N'^alpha + B / D'^beta
    R_D = max(D/U - 1, 0)          D' = U + U R_D* (1 - exp(-R_D / R_D*))
    U_N = min(N, N_opt(U))         R_N = max(N/U_N - 1, 0)    N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*))
    N_opt(D) = (D G)^(beta/alpha) G,   G = ((alpha A) / (beta B))^(1 / (alpha + beta))

R_D* is how many repetitions it takes for repeated tokens to lose 1 - 1/e of their value: 15.4
for autoregressive models; Prabhudesai et al., "Diffusion Beats Autoregressive in
Data-Constrained Settings" (arXiv 2507.15857) fit about 500 for masked diffusion. Their other
per-objective constants are not confirmed (docs/diffusion.md), so
``--objective mdm`` replaces R_D* only: its losses are the AR law with diffusion's repetition
value, an illustration, while its D'/U and epoch counts depend on R_D* alone.

Needs only ``math``, like ``utils/compute_budget.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass

try:
    from utils.compute_budget import parse_count
except ImportError:  # run as a script from another directory
    from compute_budget import parse_count  # type: ignore[no-redef]


@dataclass(frozen=True, slots=True)
class LawConstants:
    """Fitted constants of the law (defaults: datablations, autoregressive, C4).

    Attributes:
        a: log A.
        b: log B.
        e: log E.
        alpha: Parameter exponent.
        beta: Data exponent.
        rd_star: R_D*, the decay constant of repeated data's value.
        rn_star: R_N*, the decay constant of excess parameters' value.
    """

    a: float = 6.255414
    b: float = 7.3049974
    e: float = 0.6254804
    alpha: float = 0.3526596
    beta: float = 0.3526596
    rd_star: float = 15.387756
    rn_star: float = 5.309743


R_D_STAR = {"ar": 15.387756, "mdm": 500.0}
"""R_D* per objective: datablations' AR fit and arXiv 2507.15857's diffusion value."""


def effective_data(tokens: float, unique: float, rd_star: float) -> float:
    """D' = U + U R_D* (1 - exp(-R_D / R_D*)) with R_D = max(D/U - 1, 0) repetitions."""
    repeats = max(tokens / unique - 1.0, 0.0)
    return unique + unique * rd_star * (1.0 - math.exp(-repeats / rd_star))


def optimal_params(tokens: float, c: LawConstants = LawConstants()) -> float:
    """N_opt(D) = (D G)^(beta/alpha) G: the compute-optimal parameters for D tokens."""
    g = ((c.alpha * math.exp(c.a)) / (c.beta * math.exp(c.b))) ** (1.0 / (c.alpha + c.beta))
    return (tokens * g) ** (c.beta / c.alpha) * g


def effective_params(params: float, unique: float, c: LawConstants = LawConstants()) -> float:
    """N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)), U_N = min(N, N_opt(U)), R_N = max(N/U_N - 1, 0)."""
    base = min(params, optimal_params(unique, c))
    excess = max(params / base - 1.0, 0.0)
    return base + base * c.rn_star * (1.0 - math.exp(-excess / c.rn_star))


def loss(params: float, tokens: float, unique: float, c: LawConstants = LawConstants()) -> float:
    """L(N, D, U) = E + A / N'^alpha + B / D'^beta."""
    n_eff = effective_params(params, unique, c)
    d_eff = effective_data(tokens, unique, c.rd_star)
    return math.exp(c.e) + math.exp(c.a) / n_eff**c.alpha + math.exp(c.b) / d_eff**c.beta


def epochs_as_good_as_fresh(rd_star: float, fraction: float = 0.9) -> int:
    """The most epochs E for which E passes over U tokens are still worth ``fraction`` of E*U
    fresh tokens (D'/(E U) >= fraction). 5 for R_D* = 15.4, about 100 for R_D* = 500."""
    epochs = 1
    while effective_data(epochs + 1, 1.0, rd_star) / (epochs + 1) >= fraction:
        epochs += 1
    return epochs


def epochs_until_repeats_stop_paying(rd_star: float, marginal: float = 0.1) -> int:
    """The first epoch whose pass is worth less than ``marginal`` of a fresh epoch: the pass
    from E - 1 to E epochs adds D'(E) - D'(E - 1) = U R_D* e^(-(E-2)/R_D*) (1 - e^(-1/R_D*))."""
    epoch = 2
    while effective_data(epoch, 1.0, rd_star) - effective_data(epoch - 1, 1.0, rd_star) >= marginal:
        epoch += 1
    return epoch


def report(params: float, unique: float, tokens: float | None, c: LawConstants, epochs: list[float]) -> str:
    """The text the CLI prints."""
    lines = [f"R_D* = {c.rd_star:g}, R_N* = {c.rn_star:g}; N_opt(U) = {optimal_params(unique, c):.4g}"]
    if tokens is not None:
        lines.append(f"L(N={params:.4g}, D={tokens:.4g}, U={unique:.4g}) = {loss(params, tokens, unique, c):.16g}"
                     f"  (epochs {tokens / unique:.4g}, D'/U {effective_data(tokens, unique, c.rd_star) / unique:.4f})")
    lines.append(f"{'epochs':>8} {'D/U':>8} {'DprimeU':>9} {'value':>7} {'loss':>8}")
    for e in epochs:
        d_eff = effective_data(e * unique, unique, c.rd_star) / unique
        lines.append(f"{e:>8g} {e:>8g} {d_eff:>9.4f} {d_eff / e:>7.3f} {loss(params, e * unique, unique, c):>8.4f}")
    lines.append(f"repeats worth >= 90% of fresh data up to {epochs_as_good_as_fresh(c.rd_star)} epochs; "
                 f"an extra pass is worth < 10% of a fresh one from epoch "
                 f"{epochs_until_repeats_stop_paying(c.rd_star)} on")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", required=True, help="parameters N (e.g. 1e9, 125M)")
    p.add_argument("--unique-tokens", required=True, help="unique tokens U")
    p.add_argument("--tokens", help="total training tokens D (default: only the epoch table)")
    p.add_argument("--objective", choices=sorted(R_D_STAR), default="ar", help="R_D* preset")
    p.add_argument("--rd-star", type=float, help="override R_D*")
    p.add_argument("--epochs", default="1,2,4,10,20,50,100", help="comma-separated epoch counts to tabulate")
    args = p.parse_args(argv)
    try:
        params = parse_count(args.params, "--params", integer=False)
        unique = parse_count(args.unique_tokens, "--unique-tokens", integer=False)
        tokens = parse_count(args.tokens, "--tokens", integer=False) if args.tokens else None
        epochs = [float(x) for x in args.epochs.split(",")]
    except ValueError as e:
        print(f"data_constrained_law.py: error: {e}", file=sys.stderr)
        return 2
    rd_star = args.rd_star if args.rd_star is not None else R_D_STAR[args.objective]
    if rd_star <= 0 or any(e < 1 for e in epochs):
        print("data_constrained_law.py: error: --rd-star must be > 0 and --epochs >= 1", file=sys.stderr)
        return 2
    print(report(params, unique, tokens, dataclasses.replace(LawConstants(), rd_star=rd_star), epochs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
