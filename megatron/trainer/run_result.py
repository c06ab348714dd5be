"""``run_result.json``: the machine-readable outcome of a run, written next to its run record.

Rank 0 writes it when ``train()`` returns (finished or stopped), in the ``--save`` directory (or
the TensorBoard directory without one), atomically. A resumed run folds the earlier file in: the
validation history and wall time add up across the pieces, so ``best_valid_loss`` and
``wall_seconds`` describe the whole run. Sweeps, isoFLOP studies and scaling-law fits read their
numbers from this file, never from console text. Torch-free.
"""

from __future__ import annotations

import json
import os
from typing import Any

RESULT_FILE = "run_result.json"
RESULT_VERSION = 1


def result_dir(save: str | None, tensorboard_dir: str | None) -> str | None:
    """Where a run's result file goes: its checkpoint directory, else its TensorBoard one."""
    return save or tensorboard_dir


def read_result(directory: str) -> dict[str, Any] | None:
    """The run's result, or None when there is none (never started, or crashed before the end)."""
    path = os.path.join(directory, RESULT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def build_result(
    summary: dict[str, Any],
    *,
    iteration: int,
    stop_reason: str | None,
    train_loss: float | None,
    test_loss: float | None,
    valid_history: list[tuple[int, float]],
    seconds: float,
    earlier: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The result record of a run piece, merged with the earlier pieces' record.

    Args:
        summary: ``RunPlan.summary()``.
        iteration: Completed iterations at the end of this piece.
        stop_reason: Why it stopped early (None: it reached its last iteration).
        train_loss: Mean training loss of the last log interval.
        test_loss: Final test loss, if any.
        valid_history: ``(iteration, loss)`` of this piece's validations.
        seconds: Wall time of this piece.
        earlier: The record an earlier piece of the same run wrote (resume), or None.
    """
    history = [tuple(p) for p in (earlier or {}).get("valid_history", []) if p[0] < min(
        (it for it, _ in valid_history), default=iteration + 1)]
    history += [(int(it), float(loss)) for it, loss in valid_history]
    best = min(history, key=lambda p: p[1]) if history else None
    final = history[-1] if history and history[-1][0] == iteration else None
    tokens = iteration * summary["tokens_per_step"]
    return {
        "version": RESULT_VERSION,
        "finished": stop_reason is None and iteration >= summary["train_iters"],
        "stop_reason": stop_reason,
        "iteration": iteration,
        "train_iters": summary["train_iters"],
        "objective": summary.get("objective", "ar"),
        "final_valid_loss": final[1] if final else None,
        "best_valid_loss": best[1] if best else None,
        "best_valid_iteration": best[0] if best else None,
        "final_train_loss": train_loss,
        "test_loss": test_loss,
        "num_parameters": summary["num_parameters"],
        "tokens": tokens,
        "unique_tokens": (summary["unique_samples"] * summary["seq_length"]
                          if summary.get("unique_samples") else None),
        "seq_length": summary["seq_length"],
        "flops": summary["flops_per_step"] * iteration,
        "flops_6nd": 6 * summary["num_parameters"] * tokens,
        "wall_seconds": round(seconds + float((earlier or {}).get("wall_seconds", 0.0)), 3),
        "valid_history": [list(p) for p in history],
    }


def write_result(directory: str, record: dict[str, Any]) -> str:
    """Write ``record`` to ``directory/run_result.json`` through a temporary file and a rename."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, RESULT_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)
    return path
