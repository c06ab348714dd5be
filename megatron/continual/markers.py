"""Stage markers: ``<root>/<key>/STAGE_DONE.json``, written atomically and last.

A marker says a stage finished: its final checkpoint, iteration, tokens, the command that ran,
times, and a hash of the stage's definition (its trainer flags and blended data list). On a
restart a stage with a marker is skipped; a marker whose hash differs from the plan is an error
naming the stage and the fields that differ (the reference runner trusts its markers blindly).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from megatron.config.fields import ConfigError

MARKER_FILE = "STAGE_DONE.json"
STARTED_FILE = "STAGE_STARTED.json"
"""Written when a stage first starts: its definition, checked again before resuming inside it."""


class MarkerMismatch(ConfigError):
    """A finished stage's marker does not match the plan any more."""


def config_hash(definition: dict[str, Any]) -> str:
    """SHA-256 of a stage definition (canonical JSON)."""
    text = json.dumps(definition, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def marker_path(stage_dir: str, name: str = MARKER_FILE) -> str:
    """Where a stage's marker lives."""
    return os.path.join(stage_dir, name)


def read_marker(stage_dir: str, name: str = MARKER_FILE) -> dict[str, Any] | None:
    """The stage's marker, or None when it has not finished.

    Raises:
        ConfigError: The marker exists but is unreadable.
    """
    path = marker_path(stage_dir, name)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable stage marker ({e}); remove it to rerun the stage") from None


def write_marker(stage_dir: str, marker: dict[str, Any], name: str = MARKER_FILE) -> str:
    """Write the marker through a temporary file, fsync and a rename (a crash leaves none)."""
    path = marker_path(stage_dir, name)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(marker, f, indent=1, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def check_marker(key: str, marker: dict[str, Any], definition: dict[str, Any], state: str = "finished") -> None:
    """Refuse a marker recorded for another definition of stage ``key``.

    Raises:
        MarkerMismatch: Names the stage and every differing field (old -> new).
    """
    if marker.get("config_hash") == config_hash(definition):
        return
    before = marker.get("config", {})
    fields = sorted(set(before) | set(definition))
    diffs = [f"{f}: {before.get(f)!r} -> {definition.get(f)!r}" for f in fields
             if before.get(f) != definition.get(f)]
    raise MarkerMismatch(
        f"stage {key!r}: {state} with another configuration (its marker's hash "
        f"{str(marker.get('config_hash'))[:12]} != plan {config_hash(definition)[:12]}); differing "
        f"fields: {'; '.join(diffs) or 'unknown (old marker)'}. Restore the plan, or start a new run "
        "name (a finished stage is never overwritten)"
    )
