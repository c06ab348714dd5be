"""The runner's schedule check: the LRs the plan predicts for a stage's first steps against the
LRs the trainer recorded in its event stream (``<save>/events.jsonl``); a stage whose schedule
did not start where the plan asked stops the plan."""

from __future__ import annotations

import os
from typing import Any

from megatron.plan.paths import EVENTS_FILE
from megatron.schedules.registry import schedule_from_state
from megatron.trainer.events import last_launch, read_events


def predicted_lrs(schedule: dict[str, Any], start: int) -> list[str]:
    """The LRs of a stage's first three steps, formatted like the trainer's log line."""
    fn, _ = schedule_from_state(schedule)
    return [f"{fn(s) * schedule['lr']:.3e}" for s in range(start, start + 3)]


def started_lrs(directory: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The LRs of the first three steps the trainer's last launch in ``directory`` took (from its
    event stream, ``<save>/events.jsonl``), formatted like ``predicted_lrs``; and that launch's
    events.

    Raises:
        EventLogError: No event stream, or no ``run_start`` in it (the check fails closed).
    """
    path = os.path.join(directory, EVENTS_FILE)
    launch = last_launch(read_events(path), path)
    return [f"{lr:.3e}" for lr in launch[0]["first_lrs"]], launch
