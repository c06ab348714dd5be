"""kill -9 at random moments of save-every-step training (also with --async-save) loses nothing
(bench/faults.py's loops)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_random_kills_during_saves_lose_nothing(repo_root):
    out = subprocess.run([sys.executable, "bench/faults.py", "--only", "kill9", "--kills", "5"], cwd=repo_root,
                         capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "GOOD kill9_loop" in out.stdout and "bit-identical" in out.stdout


@pytest.mark.slow
def test_random_kills_during_async_saves_lose_nothing(repo_root):
    out = subprocess.run([sys.executable, "bench/faults.py", "--only", "kill9_async", "--kills", "0",
                          "--async-kills", "3"], cwd=repo_root, capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "GOOD kill9_async_loop" in out.stdout and "bit-identical" in out.stdout
