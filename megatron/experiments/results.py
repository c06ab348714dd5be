"""A sweep's results: each run's ``run_result.json`` -> ``sweep.csv``, a ranked table, plots.

Columns: ``run``, ``state`` (done / partial / new), the swept keys, then the record's numbers
(``best_valid_loss``, ``final_valid_loss``, ``num_parameters``, ``tokens``, ``unique_tokens``,
``flops``, ``flops_6nd``, ``wall_seconds``, ...). Values are the records' own, written with
``repr`` so the CSV reads back to the same floats.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any

from megatron.experiments.grid import format_value
from megatron.experiments.sweep import Sweep, run_state
from megatron.trainer.run_result import read_result

RESULT_COLUMNS = ("best_valid_loss", "final_valid_loss", "best_valid_iteration", "final_train_loss",
                  "test_loss", "objective", "num_parameters", "tokens", "unique_tokens", "seq_length",
                  "iteration", "train_iters", "flops", "flops_6nd", "wall_seconds")


def collect(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per run, from its own result file (empty numbers for runs without one)."""
    rows = []
    for run in sweep.runs:
        result = read_result(sweep.save_dir(run)) or {}
        row: dict[str, Any] = {"run": run.name, "state": run_state(sweep, run)}
        row.update(run.labels)
        row.update(run.overrides)
        row.update({c: result.get(c) for c in RESULT_COLUMNS})
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(rows: list[dict[str, Any]], path: str) -> str:
    """Write the rows (columns in first-seen order)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=columns)
        out.writeheader()
        for row in rows:
            out.writerow({k: _cell(row.get(k)) for k in columns})
    return path


def read_csv(path: str) -> list[dict[str, Any]]:
    """Rows of a ``sweep.csv`` with numbers parsed (empty cells -> None)."""
    with open(path, newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def ranked_table(rows: list[dict[str, Any]], keys: list[str], metric: str = "best_valid_loss") -> str:
    """A Markdown table of the runs, best ``metric`` first (runs without one last)."""
    def order(row: dict[str, Any]) -> tuple[int, float]:
        v = row.get(metric)
        return (0, v) if isinstance(v, (int, float)) and math.isfinite(v) else (1, 0.0)

    head = ["rank", *keys, metric, "final_valid_loss", "tokens", "flops", "wall_seconds", "state"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(sorted(rows, key=order), start=1):
        cells = [str(i), *(format_value(row.get(k)) for k in keys)]
        for col in (metric, "final_valid_loss"):
            v = row.get(col)
            cells.append(f"{v:.4f}" if isinstance(v, (int, float)) else "-")
        cells.append(f"{row['tokens']:,}" if isinstance(row.get("tokens"), int) else "-")
        cells.append(f"{row['flops']:.3g}" if isinstance(row.get("flops"), (int, float)) else "-")
        cells.append(f"{row['wall_seconds']:.0f}" if isinstance(row.get("wall_seconds"), (int, float)) else "-")
        cells.append(str(row.get("state")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_axes(rows: list[dict[str, Any]], keys: list[str], path: str, metric: str = "best_valid_loss") -> str | None:
    """Loss against each swept key, one panel per key (log x for positive numbers spanning
    more than 10x); points of the other keys' values share the panel. None without data."""
    points = [r for r in rows if isinstance(r.get(metric), (int, float))]
    if not points or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        xs = [r.get(key) for r in points]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        labels = xs if numeric else [str(x) for x in xs]
        ax.scatter(labels, [r[metric] for r in points])
        if numeric and min(xs) > 0 and max(xs) / min(xs) > 10:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(sweep: Sweep, keys: list[str]) -> tuple[str, str, str | None]:
    """Write ``sweep.csv`` and ``sweep.png`` under the sweep's root; the ranked table."""
    rows = collect(sweep)
    csv_path = write_csv(rows, os.path.join(sweep.root, "sweep.csv"))
    png = plot_axes(rows, keys, os.path.join(sweep.root, "sweep.png"))
    return ranked_table(rows, keys), csv_path, png
