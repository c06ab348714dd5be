"""Stage markers (atomic, hashed) and the runner's check of the trainer's first LRs."""

from __future__ import annotations

import json
import math
import os

import pytest

from megatron.continual.markers import (
    MarkerMismatch,
    check_marker,
    config_hash,
    read_marker,
    write_marker,
)
from megatron.continual.lr_check import predicted_lrs, started_lrs
from megatron.continual.runner import needs_universal
from megatron.schedules.registry import schedule_state
from megatron.trainer.events import EventLogError
from tests.helpers import tiny_plan


def test_marker_round_trip_and_hash_check(tmp_path):
    definition = {"flag.lr": 0.003, "data_list": "1.0 /x a\n"}
    write_marker(str(tmp_path), {"key": "s1", "config_hash": config_hash(definition), "config": definition})
    assert os.listdir(tmp_path) == ["STAGE_DONE.json"]  # no temporary file left behind
    marker = read_marker(str(tmp_path))
    check_marker("s1", marker, dict(definition))
    with pytest.raises(MarkerMismatch, match=r"stage 's1': .*differing fields: flag.lr: 0.003 -> 0.001"):
        check_marker("s1", marker, {**definition, "flag.lr": 0.001})
    assert read_marker(str(tmp_path / "none")) is None


def test_predicted_lrs_match_the_trainers_event_stream(tmp_path):
    plan = tiny_plan("--train-iters", "10", "--lr-warmup-iters", "2", "--lr", "3e-3", "--min-lr", "3e-4")
    lrs = predicted_lrs(schedule_state(plan), 1)
    # Warmup step/W, then cosine from step 2 over 8 steps to 3e-4.
    assert lrs == ["1.500e-03", "3.000e-03", f"{3e-4 + 2.7e-3 * 0.5 * (1 + math.cos(math.pi / 8)):.3e}"]
    # The trainer's event stream records the LRs it took; the runner reads them from there.
    from megatron.schedules.registry import schedule_from_state

    fn, _ = schedule_from_state(schedule_state(plan))
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"event": "run_start", "first_lrs": [0.0, 0.0, 0.0]}) + "\n"
                      + json.dumps({"event": "run_start", "first_lrs": [fn(s) * 3e-3 for s in (1, 2, 3)]}) + "\n")
    assert started_lrs(str(tmp_path))[0] == lrs  # the last launch's
    with pytest.raises(EventLogError, match="no event stream"):  # fails closed
        started_lrs(str(tmp_path / "elsewhere"))


@pytest.mark.parametrize(
    ("saved", "now", "convert"),
    [((1, 1, 2, 0), (1, 1, 1, 0), False), ((1, 1, 2, 1), (1, 1, 1, 1), True), ((1, 1, 1, 0), (2, 1, 1, 0), True),
     ((1, 1, 2, 1), (1, 1, 2, 1), False), ((1, 2, 1, 0), (1, 1, 1, 0), True)],
)
def test_when_a_stage_needs_a_universal_checkpoint(saved, now, convert):
    assert needs_universal(saved, now) is convert
