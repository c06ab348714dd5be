"""One writer per --save directory and per plan root; a stale lock is taken over; the stage
process dies with its runner and its output stays in stage.log; the kill switch ends a job chain."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from megatron.checkpointing.checkpoint import CheckpointError
from megatron.checkpointing.lock import LOCK_FILE, DirectoryLock
from megatron.config import DistEnv
from megatron.continual.launch import Runner
from megatron.trainer.loop import train
from tests.helpers import tiny_plan


def _write_lock(directory, pid, host=None):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, LOCK_FILE), "w") as f:
        json.dump({"host": host or socket.gethostname(), "pid": pid, "started": "earlier",
                   "what": "--save"}, f)


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_second_trainer_on_one_save_directory_is_refused(tmp_path, live_pid):
    save = str(tmp_path / "ckpt")
    _write_lock(save, live_pid)
    with pytest.raises(CheckpointError, match=rf"in use by pid {live_pid} on this host"):
        train(tiny_plan("--train-iters", "1", "--save", save), DistEnv())
    assert not os.path.exists(os.path.join(save, "latest"))


def test_a_lock_of_another_host_is_refused(tmp_path):
    _write_lock(tmp_path, 12345, host="elsewhere-node")
    with pytest.raises(CheckpointError, match="in use by pid 12345 on host elsewhere-node"):
        DirectoryLock(str(tmp_path), "--save").acquire()


def test_a_stale_lock_is_taken_over_and_released(tmp_path, capsys):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that is certainly gone
    save = str(tmp_path / "ckpt")
    _write_lock(save, proc.pid)
    result = train(tiny_plan("--train-iters", "1", "--save", save), DistEnv())
    assert result.iteration == 1 and (tmp_path / "ckpt" / "latest").exists()
    out = capsys.readouterr()
    assert f"taking over the stale lock {os.path.join(save, LOCK_FILE)} of pid {proc.pid}" in out.out + out.err
    assert not os.path.exists(os.path.join(save, LOCK_FILE))  # released at the end


def test_lock_is_exclusive_within_the_holder(tmp_path):
    with DirectoryLock(str(tmp_path), "plan root"):
        with open(tmp_path / LOCK_FILE) as f:
            assert json.load(f)["pid"] == os.getpid()
        other = DirectoryLock(str(tmp_path), "plan root")
        with pytest.raises(CheckpointError, match=f"in use by pid {os.getpid()}"):
            other.acquire()
    assert not (tmp_path / LOCK_FILE).exists()


def test_stage_output_survives_and_the_stage_dies_with_its_runner(tmp_path):
    """kill -9 of the runner: the stage gets SIGTERM and its last words still reach stage.log."""
    log_path = tmp_path / "stage.log"
    stage = ("import signal, sys, time\n"
             "def bye(*a):\n    print('stage saw SIGTERM, saving', flush=True); sys.exit(75)\n"
             "signal.signal(signal.SIGTERM, bye)\nprint('stage started', flush=True)\ntime.sleep(60)\n")
    runner = ("import sys\nfrom megatron.continual.launch import Runner\n"
              f"Runner().run([sys.executable, '-c', {stage!r}], {{}}, {str(log_path)!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", runner], cwd=os.getcwd(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "stage started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    expected = "\nstage started\nstage saw SIGTERM, saving\n"
    while expected not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert expected in log_path.read_text()


def test_runner_copies_the_stage_output(tmp_path, capsys):
    result = Runner().run([sys.executable, "-c", "print('a'); print('b', end='')"], {}, str(tmp_path / "log"))
    assert result.returncode == 0  # (the runner keeps no console lines: it reads the event stream)
    assert "a\nb\n" in capsys.readouterr().out
    assert (tmp_path / "log").read_text().endswith("a\nb")
