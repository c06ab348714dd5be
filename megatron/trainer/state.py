"""Training progress: where the run is, what a finished run reports, and the training stream's
position in a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megatron.config.fields import ConfigError


@dataclass
class TrainState:
    """Where the run is.

    Attributes:
        iteration: Completed optimizer steps.
        consumed_samples: Training samples consumed (the data position).
        loaded_from: The checkpoint this state was resumed from (None: a fresh start).
    """

    iteration: int = 0
    consumed_samples: int = 0
    loaded_from: str | None = None


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What a finished (or stopped) run reports.

    Attributes:
        iteration: Completed steps.
        train_loss: Mean training loss of the last log interval.
        valid_loss: Last validation loss (None without a validation split).
        test_loss: Test loss at the end (None without a test split).
        losses: Per-step training losses of this process's run.
        stop_reason: Why the run stopped early, or None.
        lr_suggestion: ``--lr-finder`` runs: (steepest-descent LR, minimum LR / 10).
        optimizer_states: The last logged optimizer-state norms
            (``--log-optimizer-states-to-tensorboard``), else None.
    """

    iteration: int
    train_loss: float
    valid_loss: float | None
    test_loss: float | None
    losses: tuple[float, ...]
    stop_reason: str | None
    lr_suggestion: tuple[float, float] | None = None
    optimizer_states: dict[str, float] | None = None
    tokens: tuple[int, int] | None = None
    """(trainable, consumed) label tokens of this process's steps (metadata is not trainable)."""
    valid_history: tuple[tuple[int, float], ...] = ()
    """(iteration, validation loss) of this process's evaluations (``run_result.json``)."""


def data_state(stream: object, consumed_samples: int) -> dict[str, Any] | None:
    """The training stream's position: per-dataset sample counts at ``consumed_samples``.

    With it a resumed run continues the blend in O(datasets), without rebuilding its prefix.
    """
    if not hasattr(stream, "counts_at"):
        return None
    return {"blend_counts": [int(c) for c in stream.counts_at(consumed_samples)]}


def restore_data_state(stream: object, consumed_samples: int, metadata: dict[str, Any]) -> None:
    """Continue the training stream at the checkpoint's position.

    Raises:
        ConfigError: The checkpoint's blend has another number of datasets (the data list
            changed); continuing would not be the same stream.
    """
    saved = (metadata.get("data") or {}).get("blend_counts")
    if saved is None or not hasattr(stream, "seek"):
        return
    try:
        stream.seek(consumed_samples, saved)
    except ValueError as e:
        raise ConfigError(
            f"--data-file-list: the checkpoint's data position does not fit this data list ({e}); "
            "use the checkpoint's list to resume, or --finetune to start a new data stream"
        ) from None
