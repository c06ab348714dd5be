#!/usr/bin/env python3
"""Fit a scaling law to your own runs (a sweep.csv of tools/sweep.py or tools/isoflop.py).

    python utils/fit_scaling_law.py --runs outputs/sweeps/isoflop-tiny/sweep.csv
    python utils/fit_scaling_law.py --runs sweep.csv --law data-constrained --bootstrap 200
    python utils/fit_scaling_law.py --runs sweep.csv --init-grid hoffmann   # all 4,500 starts

chinchilla: L(N, D) = E + A/N^alpha + B/D^beta, fitted as Hoffmann et al.'s Approach 3 (Huber
loss, delta 1e-3, on log-loss; L-BFGS from a grid of starts; the best kept). data-constrained:
the same constants from the single-epoch runs, then R_D* and R_N* (Muennighoff et al.) from all
runs, D and N replaced by the effective D' and N' of repeated data. Bootstrap resamples of the
runs give 95% intervals. Prints N_opt(C), D_opt(C) at each budget of the runs (and --flops), the
isoFLOP parabola minima (Approach 2), and writes fit.json and fit.png beside the CSV (or --out).
N is each run's parameter count and D its trained tokens, as its run_result.json recorded them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.experiments import fit_report, scaling_fit  # noqa: E402
from megatron.experiments.results import read_csv  # noqa: E402

PROG = "fit_scaling_law.py"
GRIDS = {"coarse": scaling_fit.COARSE_GRID, "hoffmann": scaling_fit.INIT_GRID,
         "single": {"a": (5.0,), "b": (5.0,), "e": (0.0,), "alpha": (0.5,), "beta": (0.5,)}}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="sweep.csv")
    p.add_argument("--law", choices=("chinchilla", "data-constrained"), default="chinchilla")
    p.add_argument("--loss-column", default="final_valid_loss", help="final_valid_loss or best_valid_loss")
    p.add_argument("--bootstrap", type=int, default=100, help="resamples for the intervals (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-grid", choices=sorted(GRIDS), default="coarse", help="starting points")
    p.add_argument("--flops", default="", help="more budgets to print N_opt/D_opt for, e.g. 1e21,1e22")
    p.add_argument("--out", help="directory for fit.json and fit.png (default: the CSV's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if not os.path.isfile(args.runs):
            raise ValueError(f"--runs: {args.runs} does not exist")
        points = fit_report.read_points(read_csv(args.runs), args.loss_column)
        starts = scaling_fit.grid_starts(GRIDS[args.init_grid])
        if args.law == "chinchilla":
            columns = [points.n, points.d, points.loss]
            fit_fn = scaling_fit.fit_chinchilla
            predict = lambda p: scaling_fit.predict_chinchilla(fit.params, p.n, p.d)  # noqa: E731
        else:
            columns = [points.n, points.d, points.u, points.loss]
            fit_fn = scaling_fit.fit_data_constrained
            predict = lambda p: scaling_fit.predict_data_constrained(fit.params, p.n, p.d, p.u)  # noqa: E731
        fit = fit_fn(*columns, starts=starts)
        if args.bootstrap:
            fit = scaling_fit.bootstrap(fit_fn, columns, fit, samples=args.bootstrap, seed=args.seed)
        budgets = sorted(set(points.budget.tolist()) | {float(x) for x in args.flops.split(",") if x.strip()})
        text = fit_report.summary(fit, args.law, budgets)
        iso_text, minima = fit_report.isoflop_summary(points)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.dirname(os.path.abspath(args.runs))
    os.makedirs(out, exist_ok=True)
    png = fit_report.plot(points, fit, predict, os.path.join(out, "fit.png"), minima)
    with open(os.path.join(out, "fit.json"), "w") as f:
        json.dump({"law": args.law, "params": fit.params, "intervals": fit.intervals, "runs": fit.n_points,
                   "objective": fit.objective, "isoflop_minima": {str(b): m[0] for b, m in minima.items()}}, f, indent=1)
    print(text)
    print(iso_text)
    print(f"wrote {os.path.join(out, 'fit.json')} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
