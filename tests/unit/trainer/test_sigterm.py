"""A SIGTERM (what PBS and Slurm send before the wall-time kill) saves a checkpoint and exits 75
(stopped early, more to do)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.helpers import tiny_args
import pytest

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--train-iters", "--save", "--save-interval")


def test_sigterm_saves_at_the_next_step_and_exits_cleanly(repo_root, tmp_path):
    save = tmp_path / "ckpt"
    cmd = [sys.executable, "-W", "ignore", "pretrain_gpt.py",
           *tiny_args("--train-iters", "100000", "--save", str(save), "--save-interval", "100000")]
    proc = subprocess.Popen(cmd, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "iter      2/" in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 75, output[-3000:]  # stopped early: a job script requeues
    assert "SIGTERM received" in output
    steps = [int(name.removeprefix("global_step")) for name in os.listdir(save) if name.startswith("global_step")]
    assert len(steps) == 1 and 2 <= steps[0] < 100000
    assert (save / "latest").read_text().strip() == f"global_step{steps[0]}"
