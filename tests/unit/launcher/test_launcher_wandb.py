"""train_alcf.sh: WANDB_PROJECT / WANDB_EXP_NAME become the W&B flags (issue 13 section 5)."""

from __future__ import annotations

from tests.unit.launcher.test_train_alcf import launch


def test_wandb_variables_become_flags(repo_root, tmp_path, shakespeare_prefix):
    out = launch(repo_root, tmp_path, prefix=shakespeare_prefix, DATA_FILE_LIST="{list}",
                 TRAIN_ITERS="4", WANDB_PROJECT="P", WANDB_EXP_NAME="E")
    assert out.returncode == 0, out.stderr
    assert "WANDB_PROJECT=P -> --wandb-project" in out.stdout
    assert "WANDB_EXP_NAME=E -> --wandb-exp-name" in out.stdout
    command = out.stdout.split("[train_alcf.sh] command:")[1].splitlines()[0]
    assert "--wandb-project P" in command and "--wandb-exp-name E" in command
