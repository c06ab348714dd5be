"""Pictures of the forgetting matrix: a heat map with the numbers in the cells, and each
evaluation set's loss across the stage checkpoints (forgetting is a rising line)."""

from __future__ import annotations

import os


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_heatmap(matrix: dict, path: str) -> str:
    """``matrix.png``: rows = checkpoints, columns = evaluation sets, loss written in each cell."""
    import numpy as np

    plt = _pyplot()
    rows, cols = matrix["checkpoints"], matrix["eval_sets"]
    values = np.array([[np.nan if v is None else v for v in r] for r in matrix["loss"]], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2.5, 0.8 * len(rows) + 2))
    image = ax.imshow(values, cmap="viridis_r", aspect="auto")
    fig.colorbar(image, ax=ax, label="mean token loss")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("evaluation set")
    ax.set_ylabel("checkpoint (end of stage)")
    finite = values[np.isfinite(values)]
    middle = float(finite.mean()) if finite.size else 0.0
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(values[i, j]):
                color = "white" if values[i, j] > middle else "black"
                ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", color=color, fontsize=9)
    m = matrix["metrics"]
    title = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if v is not None)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_lines(matrix: dict, path: str) -> str:
    """One line per evaluation set: its loss at each stage's checkpoint, with the 95% interval."""
    plt = _pyplot()
    rows = matrix["checkpoints"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, name in enumerate(matrix["eval_sets"]):
        points = [(i, r[j], lo[j], hi[j]) for i, (r, lo, hi) in
                  enumerate(zip(matrix["loss"], matrix["ci_low"], matrix["ci_high"], strict=True))
                  if r[j] is not None]
        if not points:
            continue
        xs, ys, lows, highs = zip(*points, strict=True)
        (line,) = ax.plot(xs, ys, marker="o", label=name)
        ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15)
    ax.set_xticks(range(len(rows)), rows)
    ax.set_xlabel("checkpoint (end of stage)")
    ax.set_ylabel("mean token loss")
    ax.grid(alpha=0.3)
    ax.legend(title="evaluation set", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_matrix(matrix: dict, directory: str) -> list[str]:
    """Write ``matrix.png`` and ``matrix_lines.png`` into ``directory``."""
    return [plot_heatmap(matrix, os.path.join(directory, "matrix.png")),
            plot_lines(matrix, os.path.join(directory, "matrix_lines.png"))]
