"""``--reset-data-state``: a continual stage keeps the optimizer (Adam moments), the step and the
LR schedule of the checkpoint it loads, and starts the new data list at its first sample."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from megatron.config import ConfigError, DistEnv
from megatron.trainer.loop import train
from tests.helpers import tiny_plan

COMMON = ["--tokenizer-type", "byte", "--lr-decay-iters", "8", "--lr-warmup-iters", "1", "--log-interval", "1",
          "--split", "100,0,0"]


def run(data_list: str, *flags: str):
    return train(tiny_plan(*COMMON, "--data-file-list", data_list, *flags, mock=False), DistEnv())


def optimizer_state(save: str) -> dict:
    tag = open(os.path.join(save, "latest")).read().strip()
    return torch.load(os.path.join(save, tag, "mp_rank_00_model_states.pt"), weights_only=False)


def test_carried_stage_equals_a_direct_continuation_at_data_position_zero(cpt_lists, tmp_path, capsys):
    s1, s2, ref = (str(tmp_path / n) for n in ("s1", "s2", "ref"))
    run(cpt_lists["a"], "--train-iters", "4", "--save", s1)
    stage = run(cpt_lists["b"], "--train-iters", "8", "--load", s1, "--reset-data-state", "--save", s2)
    out = capsys.readouterr().out
    assert "--reset-data-state: data position reset (checkpoint had consumed 8 samples)" in out
    assert "LR of steps 4-6" in out  # the schedule continues at step 4, no rewarm

    # The direct continuation: the same checkpoint with its data position edited to 0, resumed
    # normally on the new list. Same Adam moments, same step, same samples -> the same weights.
    shutil.copytree(s1, ref)
    meta_path = os.path.join(ref, "global_step4", "run_metadata.json")
    meta = json.load(open(meta_path))
    meta["consumed_samples"], meta["data"]["blend_counts"] = 0, [0]
    json.dump(meta, open(meta_path, "w"))
    direct = run(cpt_lists["b"], "--train-iters", "8", "--load", ref, "--save", ref)
    assert stage.losses == direct.losses and len(stage.losses) == 4
    a, b = optimizer_state(s2), optimizer_state(ref)
    for k in a["module"]:
        assert a["module"][k].equal(b["module"][k]), k
    saved = json.load(open(os.path.join(s2, "global_step8", "run_metadata.json")))
    assert (saved["iteration"], saved["consumed_samples"]) == (8, 8)  # 4 new steps x 2 samples

    # A fresh optimizer (--finetune) on the same data is a different trajectory: moments matter.
    fresh = run(cpt_lists["b"], "--train-iters", "4", "--load", s1, "--finetune", "--lr-decay-iters", "8")
    assert fresh.losses[0] == stage.losses[0] and fresh.losses[1:] != stage.losses[1:]


def test_reset_data_state_needs_a_load_without_finetune():
    with pytest.raises(ConfigError, match="--reset-data-state: needs --load and no --finetune"):
        tiny_plan("--reset-data-state")
