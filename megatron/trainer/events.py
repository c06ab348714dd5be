"""The trainer's structured event stream: the contract between a run and the programs that
drive it (the continual runner, sweeps, benches).

One JSON object per line, appended to ``--event-log`` (default ``<save>/events.jsonl``) by the
logging rank, flushed after every line, so a reader sees whole lines of a run that is still going
or that was killed (a cut last line is ignored). A relaunch of the same run appends: the file is
the history of every launch, each starting with a ``run_start`` event.

Events (``"event"`` names the kind; every line also has ``"time"``, Unix seconds):

- ``run_start``: ``iteration`` (where this launch starts, after any resume), ``train_iters``,
  ``consumed_samples``, ``first_lrs`` (the LRs of the first three steps this launch takes),
  ``schedule_fingerprint``, ``plan`` (the resolved plan's summary), ``world_size``;
- ``train``: one per log interval: ``iteration`` (its last step), ``steps``, per-step ``losses``
  and ``lrs``, the interval's mean ``loss``, ``grad_norm``, ``skipped``, ``tokens_per_s``,
  ``samples_per_s``, ``tflops_per_device``, ``consumed_samples``, ``elapsed_s`` (since start);
- ``eval``: ``split``, ``iteration``, ``loss``, ``ppl``;
- ``save``: ``iteration``, ``directory``, ``seconds``;
- ``run_end``: ``iteration``, ``status`` (``finished`` or ``stopped``), ``stop_reason``,
  ``valid_loss``, ``test_loss``.

Readers use ``read_events`` and fail closed: a missing file or a missing event is an error, never
a silently skipped check.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, TextIO

from megatron.plan.paths import EVENTS_FILE  # noqa: F401  (re-exported for readers)


class EventLogError(RuntimeError):
    """A missing or unreadable event stream, or a run that did not record what a reader needs."""


def _clean(value: Any) -> Any:
    """JSON-safe values: non-finite floats become strings ("nan", "inf"), as JSON has none."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class EventLog:
    """Appends events to ``path`` (nothing when ``path`` is None: non-logging ranks, or off).

    Args:
        path: The JSONL file; its directory is created.
    """

    def __init__(self, path: str | None):
        self.path = path
        self._file: TextIO | None = None
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed in close())

    @property
    def active(self) -> bool:
        """Whether events are written."""
        return self._file is not None

    def write(self, event: str, **fields: Any) -> None:
        """Append one event line and flush it."""
        if self._file is None:
            return
        line = json.dumps(_clean({"event": event, "time": round(time.time(), 3), **fields}))
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file (further writes are dropped)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def read_events(path: str) -> list[dict[str, Any]]:
    """Every event of ``path``, in order. A cut last line (a process killed mid-write) is left out.

    Raises:
        EventLogError: No such file, or a malformed line before the last (naming file and line).
    """
    if not os.path.isfile(path):
        raise EventLogError(f"{path}: no event stream (the trainer writes it; was the run started "
                            "with --event-log none, or not at all?)")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            if number == len(lines):  # an unterminated last line: the writer was killed mid-line
                break
            raise EventLogError(f"{path}:{number}: not a JSON event line") from None
    return events


def last_launch(events: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """The events of the last launch (from its ``run_start`` on).

    Raises:
        EventLogError: No ``run_start`` in the stream.
    """
    starts = [i for i, e in enumerate(events) if e.get("event") == "run_start"]
    if not starts:
        raise EventLogError(f"{path}: no run_start event; the run did not start")
    return events[starts[-1]:]


def require_event(events: list[dict[str, Any]], kind: str, path: str) -> dict[str, Any]:
    """The first event of ``kind``.

    Raises:
        EventLogError: None recorded (naming the file and the kind).
    """
    for event in events:
        if event.get("event") == kind:
            return event
    raise EventLogError(f"{path}: no {kind} event recorded")
