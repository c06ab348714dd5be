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
    # Its own --save: a second run into the repository's checkpoints/ would meet the first run's
    # committed global_step4, which is never overwritten.
    env["SAVE"] = str(tmp_path / "ckpt")
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


def test_continuing_from_a_checkpoint_takes_its_shape(repo_root, tmp_path, shakespeare_prefix):
    """`DATA_FILE_LIST=... LR=... LOAD=ckpt bash train_alcf.sh --finetune` after the demo, with no
    architecture flags: the model shape and tokenizer come from the checkpoint."""
    data = tmp_path / "list.txt"
    data.write_text(f"1 {shakespeare_prefix} plays\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PBS_NODEFILE", "SLURM_JOB_NODELIST", "TP", "PP")}
    env.update(PYTHON_EXEC=sys.executable, NPROC="1", DATA_FILE_LIST=str(data), OMP_NUM_THREADS="1",
               EVAL_ITERS="1", TBDIR=str(tmp_path / "tb"))
    base = subprocess.run(
        ["bash", "train_alcf.sh", "--config", "ALCF/presets/demo.yaml"], cwd=repo_root, capture_output=True,
        text=True, timeout=300, env={**env, "TRAIN_ITERS": "1", "LR_WARMUP_ITERS": "0", "MICRO_BATCH": "2",
                                    "SAVE": str(tmp_path / "demo")})
    assert base.returncode == 0, base.stdout[-2000:] + base.stderr[-3000:]
    out = subprocess.run(
        ["bash", "train_alcf.sh", "--finetune"], cwd=repo_root, capture_output=True, text=True, timeout=300,
        env={**env, "LR": "1e-3", "LOAD": str(tmp_path / "demo"), "TRAIN_ITERS": "40", "LOG_INTERVAL": "20",
             "SAVE": str(tmp_path / "cpt")})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "iter     40/40" in out.stdout
    log = out.stdout + out.stderr
    # The demo's shape (4 layers of 256, RMSNorm, SwiGLU), taken from the checkpoint, and said so.
    assert "config --num-layers = 4  (from checkpoint" in log
    assert "config --hidden-size = 256  (from checkpoint" in log
