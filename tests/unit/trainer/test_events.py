"""The trainer's event stream (``megatron/trainer/events.py``): what a run did, in a file its
callers read instead of console text. Per-step losses equal the run's, the first LRs of a resumed
launch equal the uninterrupted run's, evaluations and saves are recorded, a relaunch appends, and
readers fail closed."""

from __future__ import annotations

import json
import os

import pytest

from megatron.config import DistEnv
from megatron.trainer.events import EventLogError, last_launch, read_events, require_event
from megatron.trainer.loop import train
from tests.helpers import tiny_plan

pytestmark = pytest.mark.deepspeed

FLAGS = ("--log-interval", "2", "--eval-interval", "2", "--eval-iters", "1", "--split", "80,10,10")


def _kinds(events):
    return [e["event"] for e in events]


def test_events_record_the_run_and_a_relaunch_appends(tmp_path):
    save = str(tmp_path / "ckpt")
    run = ("--train-iters", "6", "--save", save, "--save-interval", "2", *FLAGS)
    first = train(tiny_plan(*run, "--exit-interval", "4"), DistEnv())
    path = os.path.join(save, "events.jsonl")
    events = read_events(path)
    assert _kinds(events)[0] == "run_start" and _kinds(events)[-1] == "run_end"
    start = events[0]
    assert (start["iteration"], start["train_iters"], start["consumed_samples"]) == (0, 6, 0)
    train_events = [e for e in events if e["event"] == "train"]
    assert [e["iteration"] for e in train_events] == [2, 4]
    losses = [v for e in train_events for v in e["losses"]]
    assert losses == list(first.losses)  # exactly: the same float32 values, read once per interval
    lrs = [v for e in train_events for v in e["lrs"]]
    assert start["first_lrs"] == pytest.approx(lrs[:3], rel=1e-12)
    assert train_events[-1]["loss"] == pytest.approx(sum(losses[2:]) / 2)
    evals = {(e["split"], e["iteration"]): e["loss"] for e in events if e["event"] == "eval"}
    assert set(evals) == {("valid", 2), ("valid", 4)}
    assert evals[("valid", 4)] == first.valid_loss
    assert [e["iteration"] for e in events if e["event"] == "save"] == [2, 4]
    end = events[-1]
    assert (end["status"], end["iteration"]) == ("stopped", 4) and end["stop_reason"] == first.stop_reason

    # The relaunch resumes and appends a launch that starts at iteration 4 with the LRs and
    # losses of the uninterrupted run's steps 5-6.
    train(tiny_plan(*run, "--load", save), DistEnv())
    straight = train(tiny_plan("--train-iters", "6", "--save", str(tmp_path / "straight"), *FLAGS), DistEnv())
    all_events = read_events(path)
    assert _kinds(all_events).count("run_start") == 2
    launch = last_launch(all_events, path)
    assert launch[0]["iteration"] == 4
    straight_lrs = [v for e in read_events(str(tmp_path / "straight" / "events.jsonl"))
                    if e["event"] == "train" for v in e["lrs"]]
    assert launch[0]["first_lrs"][:2] == straight_lrs[4:6]
    assert [v for e in launch if e["event"] == "train" for v in e["losses"]] == list(straight.losses[4:])
    assert (launch[-1]["event"], launch[-1]["status"]) == ("run_end", "finished")


def test_event_log_none_writes_nothing(tmp_path):
    save = str(tmp_path / "ckpt")
    train(tiny_plan("--train-iters", "1", "--save", save, "--event-log", "none"), DistEnv())
    assert not os.path.exists(os.path.join(save, "events.jsonl"))


def test_readers_fail_closed(tmp_path):
    path = str(tmp_path / "events.jsonl")
    with pytest.raises(EventLogError, match="no event stream"):
        read_events(path)
    with open(path, "w") as f:
        f.write(json.dumps({"event": "train", "iteration": 1}) + "\n" + '{"event": "tra')  # killed mid-line
    events = read_events(path)
    assert _kinds(events) == ["train"]
    with pytest.raises(EventLogError, match="no run_start"):
        last_launch(events, path)
    with pytest.raises(EventLogError, match="no eval event"):
        require_event(events, "eval", path)
    with open(path, "w") as f:
        f.write("garbage\n" + json.dumps({"event": "run_start"}) + "\n")
    with pytest.raises(EventLogError, match=r"events.jsonl:1: not a JSON event line"):
        read_events(path)
