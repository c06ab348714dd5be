"""``--skip-train``: evaluate a checkpoint on the given data lists and exit, writing nothing.

Oracle: the trainer's own final evaluation of the same weights on the same batches."""

from __future__ import annotations

import os

import pytest

import pretrain_gpt
from megatron.config import ConfigError, DistEnv
from megatron.trainer.loop import train
from tests.helpers import tiny_args, tiny_plan

REAL = ["--hidden-size", "32", "--seq-length", "32", "--micro-batch-size", "4", "--lr", "1e-2",
        "--split", "80,10,10", "--eval-iters", "2"]


def _tree(root: str) -> dict[str, float]:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(root) for f in files}


@pytest.fixture
def trained(tmp_path, shakespeare_prefix):  # noqa: ANN201
    data_list = tmp_path / "list.txt"
    data_list.write_text(f"1 {shakespeare_prefix} plays\n")
    flags = [*REAL, "--data-file-list", str(data_list)]
    save = str(tmp_path / "ckpt")
    result = train(tiny_plan(*flags, "--train-iters", "6", "--save", save, mock=False), DistEnv())
    assert result.valid_loss is not None and result.test_loss is not None
    return flags, save, result


def test_skip_train_reports_the_final_evaluation_and_writes_nothing(trained):
    flags, save, result = trained
    before = _tree(save)
    again = train(tiny_plan(*flags, "--load", save, "--skip-train", "--save", save, mock=False), DistEnv())
    assert (again.valid_loss, again.test_loss) == (result.valid_loss, result.test_loss)
    assert again.iteration == 6 and again.losses == ()
    assert _tree(save) == before


def test_pretrain_gpt_skip_train_exits_zero(trained, capsys):
    flags, save, _ = trained
    before = _tree(save)
    assert pretrain_gpt.main([*tiny_args(*flags, mock=False), "--load", save, "--save", save, "--skip-train"]) == 0
    assert _tree(save) == before


def test_skip_train_needs_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="--skip-train: needs --load"):
        tiny_plan("--skip-train")
    # An empty directory (train_alcf.sh's default --load is the run's own --save) evaluates
    # nothing: random weights are not a result.
    empty = tmp_path / "fresh"
    empty.mkdir()
    with pytest.raises(ConfigError, match="--skip-train: --load .*fresh holds no checkpoint"):
        train(tiny_plan("--skip-train", "--load", str(empty), "--split", "80,10,10"), DistEnv())


def test_skip_train_on_a_universal_checkpoint(trained, tmp_path):
    """The form an imported model takes: ``--universal-checkpoint --load UNIVERSAL --skip-train``."""
    from megatron.checkpointing.convert import convert

    flags, save, result = trained
    universal = convert(save, str(tmp_path / "universal")).output
    before = _tree(universal)
    again = train(tiny_plan(*flags, "--load", universal, "--universal-checkpoint", "--skip-train", mock=False),
                  DistEnv())
    assert again.valid_loss == pytest.approx(result.valid_loss, rel=1e-6)
    assert again.test_loss == pytest.approx(result.test_loss, rel=1e-6)
    assert _tree(universal) == before
