"""The continual runner: one runner per plan root; STOP ends a job chain; a stage that stopped
early (exit 75) is a stop, not a failure."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from megatron.checkpointing.checkpoint import CheckpointError
from megatron.checkpointing.lock import DirectoryLock
from megatron.continual.launch import Launch
from megatron.continual.plan import load_plan
from megatron.continual.runner import EXIT_DONE, PlanRunner
from tests.unit.continual.test_runner import write_plan


@pytest.fixture
def plan(tmp_path):
    data = tmp_path / "list.txt"
    data.write_text(f"1.0 {tmp_path}/missing a\n")  # never read: nothing may start
    return load_plan(write_plan(tmp_path / "plan.yaml", {"a": str(data), "eval_a": str(data)}, stages=("a",)))


def test_stop_present_at_start_is_consumed_and_nothing_runs(plan, monkeypatch):
    os.makedirs(plan.root)
    stop = os.path.join(plan.root, "STOP")
    open(stop, "w").close()
    monkeypatch.setattr(PlanRunner, "prepare", lambda self: pytest.fail("a stage was prepared"))
    assert PlanRunner(plan, Launch(launcher="python")).run() == EXIT_DONE
    assert not os.path.exists(stop)


def test_a_second_runner_on_one_plan_is_refused(plan, monkeypatch):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = DirectoryLock(plan.root, "plan root")
        monkeypatch.setattr("os.getpid", lambda: sleeper.pid)
        monkeypatch.setattr("megatron.checkpointing.lock._proc_start", lambda pid: None)
        lock.acquire()
        monkeypatch.undo()
        with pytest.raises(CheckpointError, match=rf"plan root: .* in use by pid {sleeper.pid}"):
            PlanRunner(plan, Launch(launcher="python")).run()
    finally:
        sleeper.kill()
        sleeper.wait()
