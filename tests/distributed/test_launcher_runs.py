"""Real 2-process CPU runs through `bash train_alcf.sh` (torchrun), with TP=2 and with PP=2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.deepspeed


@pytest.mark.parametrize("layout", [{"TP": "2"}, {"PP": "2", "GRAD_ACC_STEPS": "2"}], ids=["tp2", "pp2"])
def test_two_process_run_through_the_launcher(repo_root, tmp_path, shakespeare_prefix, layout):
    data = tmp_path / "list.txt"
    data.write_text(f"1 {shakespeare_prefix} plays\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PBS_NODEFILE", "SLURM_JOB_NODELIST", "TP", "PP")}
    env.update(PYTHON_EXEC=sys.executable, NPROC="2", DATA_FILE_LIST=str(data), TRAIN_ITERS="4",
               NLAYERS="2", HIDDEN="32", HEADS="4", SEQ_LEN="32", MICRO_BATCH="2", LOG_INTERVAL="2",
               EVAL_ITERS="1", TOKENIZER_TYPE="byte", OMP_NUM_THREADS="1", **layout)
    out = subprocess.run(["bash", "train_alcf.sh"], cwd=repo_root, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "topology: local, 1 node(s) x 2 rank(s) = world size 2" in out.stdout
    assert "iter      4/4" in out.stdout and "valid loss at iteration 4" in out.stdout


def test_env_check_reports_every_rank_and_a_collective(repo_root):
    env = {k: v for k, v in os.environ.items() if k not in ("PBS_NODEFILE", "SLURM_JOB_NODELIST")}
    env.update(PYTHON_EXEC=sys.executable, NPROC="2")
    out = subprocess.run(["bash", "ALCF/env_check.sh"], cwd=repo_root, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rank 0/2" in out.stdout and "rank 1/2" in out.stdout
    assert "all_reduce over 2 ranks (gloo): ok" in out.stdout
