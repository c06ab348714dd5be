"""The forgetting matrix of a continual run: rows = stage checkpoints, columns = evaluation sets.

Cell ``E[i][j]`` is the mean token cross-entropy of stage ``i``'s final checkpoint on evaluation
set ``j`` (lower is better), with a bootstrap 95% interval over sequences. The summary follows
TiC-CLIP / TiC-LM (Garg et al. 2023, arXiv 2310.16226; Li et al. 2025, arXiv 2504.02107),
classifying each cell by stage order:

- **ID** (in-distribution): ``j == i``, the checkpoint on its own stage's data;
- **Backward**: ``j < i``, older data (forgetting shows here);
- **Forward**: ``j > i``, data of later stages (rectangular matrices: evaluation sets of stages
  without a checkpoint yet are forward for every row).

Each metric is the mean of its cells. With a normalizer (a reference model's losses, e.g. an
oracle trained on everything), every cell is first reduced by the normalizer's loss on the same
evaluation set, so all three metrics drop by exactly that offset when it is constant. Extra
evaluation sets that are not stages enter the matrix but none of the three metrics.

Cells live in an append-only JSONL file, one line per (checkpoint, evaluation set); re-running
skips cells it already has, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

CELLS_FILE = "cells.jsonl"
MATRIX_FILE = "matrix.json"
NORMALIZER_ROW = "normalizer"


@dataclass(frozen=True, slots=True)
class Cell:
    """One (checkpoint, evaluation set) measurement.

    Attributes:
        checkpoint: Stage key of the checkpoint (or ``normalizer``).
        eval_set: Key of the evaluation set (a stage key or an extra list's name).
        loss: Mean token cross-entropy over all evaluated tokens.
        ci_low: Lower end of the bootstrap 95% interval.
        ci_high: Upper end.
        sequences: Sequences evaluated.
        tokens: Tokens evaluated.
        source: The checkpoint directory that was evaluated.
    """

    checkpoint: str
    eval_set: str
    loss: float
    ci_low: float
    ci_high: float
    sequences: int
    tokens: int
    source: str = ""


def token_mean(losses: np.ndarray, tokens: np.ndarray) -> float:
    """Mean token loss from per-sequence mean losses and token counts."""
    return float((losses * tokens).sum() / tokens.sum())


def bootstrap_ci(
    losses: Sequence[float],
    tokens: Sequence[int] | None = None,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the token-weighted mean loss, resampling sequences.

    Args:
        losses: Mean token loss of each sequence.
        tokens: Tokens of each sequence (default: all equal).
        resamples: Bootstrap resamples.
        seed: Generator seed (the interval is reproducible).
        level: Coverage.

    Returns:
        (low, high).

    Raises:
        ValueError: No sequences.
    """
    values = np.asarray(losses, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap_ci: no sequences to resample")
    weights = np.ones_like(values) if tokens is None else np.asarray(tokens, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.size, size=(resamples, values.size))
    means = (values[picks] * weights[picks]).sum(axis=1) / weights[picks].sum(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def make_cell(checkpoint: str, eval_set: str, losses: Sequence[float], tokens: Sequence[int],
              source: str = "") -> Cell:
    """A cell from per-sequence losses (token-weighted mean and its bootstrap interval)."""
    values, counts = np.asarray(losses, np.float64), np.asarray(tokens, np.int64)
    low, high = bootstrap_ci(values, counts)
    return Cell(checkpoint, eval_set, token_mean(values, counts), low, high,
                int(values.size), int(counts.sum()), source)


class CellStore:
    """The append-only JSONL of cells; the last line of a (checkpoint, eval set) pair wins.

    Args:
        path: The JSONL file (created on the first append).
    """

    def __init__(self, path: str):
        self.path = path
        self.cells: dict[tuple[str, str], Cell] = {}
        if os.path.isfile(path):
            with open(path) as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        cell = Cell(**json.loads(line))
                    except (json.JSONDecodeError, TypeError) as e:
                        if number == _count_lines(path):  # a write cut short: ignore and redo it
                            break
                        raise ValueError(f"{path}:{number}: not a matrix cell ({e})") from None
                    self.cells[(cell.checkpoint, cell.eval_set)] = cell

    def has(self, checkpoint: str, eval_set: str) -> bool:
        """True when the cell was measured already."""
        return (checkpoint, eval_set) in self.cells

    def append(self, cell: Cell) -> None:
        """Record ``cell`` durably (one line, flushed and synced)."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(asdict(cell)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.cells[(cell.checkpoint, cell.eval_set)] = cell


def _count_lines(path: str) -> int:
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def metrics(
    losses: Sequence[Sequence[float]],
    normalizer: Sequence[float] | None = None,
    *,
    eval_stage: Sequence[int | None] | None = None,
) -> dict[str, float | None]:
    """ID / Backward / Forward means of a (possibly rectangular) loss matrix.

    Args:
        losses: ``losses[i][j]``: checkpoint of stage ``i`` on evaluation set ``j`` (NaN = missing).
        normalizer: Per evaluation set, subtracted from every cell of its column.
        eval_stage: The stage index of each column (None: an extra set, in no metric); default
            ``j``.

    Returns:
        ``{"id", "backward", "forward"}``; a metric without cells is None.
    """
    sums = {"id": [], "backward": [], "forward": []}
    for i, row in enumerate(losses):
        for j, value in enumerate(row):
            stage = j if eval_stage is None else eval_stage[j]
            if stage is None or value is None or math.isnan(value):
                continue
            offset = 0.0 if normalizer is None else normalizer[j]
            kind = "id" if stage == i else "backward" if stage < i else "forward"
            sums[kind].append(value - offset)
    return {k: (sum(v) / len(v) if v else None) for k, v in sums.items()}


def build_matrix(
    cells: dict[tuple[str, str], Cell],
    checkpoints: Sequence[str],
    eval_sets: Sequence[str],
    stage_keys: Sequence[str],
) -> dict:
    """The content of ``matrix.json`` from the measured cells.

    Args:
        cells: Measured cells by (checkpoint, eval set); a ``normalizer`` row is used if present.
        checkpoints: Row keys in stage order (finished stages).
        eval_sets: Column keys (stage keys first, in stage order, then extra sets).
        stage_keys: Every stage of the plan, in order (classifies rows and columns).
    """
    index = {key: k for k, key in enumerate(stage_keys)}

    def grid(rows: Sequence[str], field: str) -> list[list[float | None]]:
        return [[getattr(cells[(r, e)], field) if (r, e) in cells else None for e in eval_sets]
                for r in rows]

    raw = grid(checkpoints, "loss")
    # Rows are placed at their stage index so metrics() classifies them by stage order.
    by_stage = [[math.nan] * len(eval_sets) for _ in range(len(stage_keys))]
    for key, row in zip(checkpoints, raw, strict=True):
        by_stage[index[key]] = [math.nan if v is None else v for v in row]
    columns = [index.get(e) for e in eval_sets]
    out = {
        "checkpoints": list(checkpoints),
        "eval_sets": list(eval_sets),
        "loss": raw,
        "ci_low": grid(checkpoints, "ci_low"),
        "ci_high": grid(checkpoints, "ci_high"),
        "metrics": metrics(by_stage, eval_stage=columns),
    }
    norm = [cells.get((NORMALIZER_ROW, e)) for e in eval_sets]
    if all(c is not None for c in norm) and norm:
        row = [c.loss for c in norm]
        out["normalizer"] = row
        out["normalized_loss"] = [[None if v is None else v - n for v, n in zip(r, row, strict=True)]
                                  for r in raw]
        out["normalized_metrics"] = metrics(by_stage, row, eval_stage=columns)
    return out


def write_matrix(directory: str, matrix: dict) -> str:
    """Write ``matrix.json`` atomically; return its path."""
    path = os.path.join(directory, MATRIX_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(matrix, f, indent=1)
    os.replace(tmp, path)
    return path
