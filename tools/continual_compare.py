#!/usr/bin/env python3
"""Compare continual-pretraining methods: the ID / backward / forward means of several plans'
forgetting matrices (``tools/continual_eval.py`` output), differences against the first (the
baseline, e.g. naive sequential training) and a grouped bar chart.

    python tools/continual_compare.py outputs/cpt/cpt-demo-{naive,replay,ewc,lwf}/eval/matrix.json \
        [--names naive,replay,ewc,lwf] [--plot compare.png]

Lower is better for all three (mean token losses; normalized metrics when every matrix has them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

METRICS = ("id", "backward", "forward")


def load(path: str) -> dict:
    """One matrix.json: its metrics (normalized when present) and its last checkpoint's row."""
    if not os.path.isfile(path):
        raise SystemExit(
            f"continual_compare.py: error: {path} does not exist (run tools/continual_eval.py --plan first)"
        )
    with open(path) as f:
        matrix = json.load(f)
    missing = [k for k in ("metrics", "loss", "eval_sets", "checkpoints") if k not in matrix]
    if missing:
        raise SystemExit(
            f"continual_compare.py: error: {path} has no {', '.join(missing)}: not a continual_eval.py matrix.json"
        )
    return matrix


def default_name(path: str) -> str:
    """outputs/cpt/<plan>/eval/matrix.json -> <plan>."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    return parts[-3] if len(parts) >= 3 and parts[-2] == "eval" else os.path.splitext(parts[-1])[0]


def table(names: list[str], matrices: list[dict], key: str = "metrics") -> list[str]:
    """Markdown: one row per method, each metric with its difference to the first method; then
    the last checkpoint's loss on every evaluation set."""
    sets = matrices[0]["eval_sets"]
    head = (
        "| method | "
        + " | ".join(METRICS)
        + " | "
        + " | ".join(f"final on {s}" for s in sets)
        + " |"
    )
    lines = [head, "|---|" + "---|" * (len(METRICS) + len(sets))]
    base = matrices[0][key]
    for name, matrix in zip(names, matrices, strict=True):
        cells = [f"{matrix[key][m]:.3f}" + ("" if matrix is matrices[0] else f" ({matrix[key][m] - base[m]:+.3f})")
                 for m in METRICS]  # fmt: skip
        final = matrix["loss"][-1]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(f"{x:.3f}" for x in final)
            + " |"
        )
    return lines


def plot(names: list[str], matrices: list[dict], key: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(names)
    for i, (name, matrix) in enumerate(zip(names, matrices, strict=True)):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(METRICS))]
        bars = ax.bar(xs, [matrix[key][m] for m in METRICS], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(METRICS)), METRICS)
    ax.set_ylabel(
        "mean token loss" + (" (normalized)" if key != "metrics" else "") + ", lower is better"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("matrices", nargs="+", help="matrix.json files; the first is the baseline")
    p.add_argument(
        "--names", default=None, help="comma-separated, one per matrix (default: the plan folder)"
    )
    p.add_argument("--plot", default=None, help="write a grouped bar chart here (PNG)")
    args = p.parse_args(argv)
    matrices = [load(path) for path in args.matrices]
    names = args.names.split(",") if args.names else [default_name(path) for path in args.matrices]
    if len(names) != len(matrices):
        p.error(f"--names: {len(names)} names for {len(matrices)} matrices")
    sets = {tuple(m["eval_sets"]) for m in matrices}
    if len(sets) > 1:
        p.error(
            f"the matrices have different evaluation sets {sorted(sets)}: compare plans over the same stages"
        )
    key = "normalized_metrics" if all(m.get("normalized_metrics") for m in matrices) else "metrics"
    print("\n".join(table(names, matrices, key)))
    if args.plot:
        plot(names, matrices, key, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
