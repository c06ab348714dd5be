"""Seed 004's ``ds_to_universal.py`` line works with only the script name changed (issue 22)."""

from __future__ import annotations

import os

import pytest

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import tiny_plan
from tools import convert_checkpoint


@pytest.mark.slow
def test_seed004_conversion_line_converts_and_the_result_loads(tmp_path, capsys):
    ckpt_dir = str(tmp_path / "checkpoints" / "ws1_ds_stage1_nl2")
    base = train(tiny_plan("--train-iters", "4", "--save", ckpt_dir, "--zero-stage", "1"), DistEnv())
    # gs=$(cat "${ckpt_dir}/latest_checkpointed_iteration.txt")
    with open(os.path.join(ckpt_dir, "latest_checkpointed_iteration.txt")) as f:
        gs = f.read().strip()
    line = ["--input_folder", f"{ckpt_dir}/global_step{gs}",
            "--output_folder", f"{ckpt_dir}/global_step{gs}_universal", "--keep_temp_folder"]
    assert convert_checkpoint.main(line) == 0
    assert "verified in" in capsys.readouterr().err
    # Loads at another ZeRO stage, weights only (the seed's CPT step: --universal-checkpoint --finetune).
    tuned = train(tiny_plan("--train-iters", "2", "--load", f"{ckpt_dir}/global_step{gs}_universal",
                            "--universal-checkpoint", "--finetune"), DistEnv())
    assert tuned.losses[0] == pytest.approx(base.losses[-1], rel=0.1)
    fresh = train(tiny_plan("--train-iters", "2"), DistEnv())
    assert tuned.losses[0] < fresh.losses[0]


def test_ds_to_universal_worker_flags_map_to_workers():
    args = convert_checkpoint.parse_args(["--input_folder", "x", "--num_extract_workers", "4",
                                          "--num_merge_workers", "2"])
    assert (args.input, args.output, args.workers) == ("x", None, 4)
    assert convert_checkpoint.parse_args(["--input", "x"]).workers == 1
    assert convert_checkpoint.parse_args(["--input", "x", "--workers", "0"]).workers == 0  # refused in main
