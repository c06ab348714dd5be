"""Command-line overrides of a plan in TiC-LM's spellings."""

from __future__ import annotations

import argparse

import pytest
import yaml

from megatron.config.fields import ConfigError
from megatron.continual.overrides import add_override_args, given_overrides
from megatron.continual.plan import load_plan


def overrides(*argv: str) -> dict:
    p = argparse.ArgumentParser()
    add_override_args(p)
    return given_overrides(p.parse_args(list(argv)))


@pytest.fixture
def plan_file(tmp_path, cpt_lists):
    stages = [{"key": k, "data": cpt_lists["a"]} for k in ("201312", "201401", "201402", "201403")]
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"name": "tic", "stages": stages, "train_iters_per_stage": 5,
                                    "method": {"lr": 1e-3, "replay": "none"}}))
    return str(path)


def test_tic_spellings_edit_the_plan(plan_file):
    plan = load_plan(plan_file, overrides(
        "--exp-name", "tuned", "--lr", "3e-4", "--lr_cooldown_end", "3e-5", "--warmup", "50",
        "--warmup-usage", "first", "--use-ar-schedule", "--replay-ratio", "0.5", "--replay-pool", "tokens",
        "--samples-per-timestep", "1e6", "--time-range", "201401:201403", "--num-timesteps", "2"))
    m = plan.stages[0].method
    assert plan.name == "tuned" and [s.key for s in plan.stages] == ["201401", "201402"]
    assert (m.lr, m.min_lr, m.warmup_iters, m.warmup_usage, m.schedule) == (3e-4, 3e-5, 50, "first", "ar-cosine")
    assert (m.replay.policy, m.replay.ratio, m.replay.pool) == ("ratio", 0.5, "tokens")
    assert (plan.stages[0].tokens, plan.stages[0].train_iters) == (1e6, None)
    const = load_plan(plan_file, overrides("--lr-scheduler", "const", "--replay-ratio", "equal"))
    assert const.stages[0].method.schedule == "constant" and const.stages[0].method.replay.policy == "equal"


def test_a_selection_without_stages_is_an_error(plan_file):
    with pytest.raises(ConfigError, match="no stage of the plan is left"):
        load_plan(plan_file, overrides("--starting-timestep", "2030"))
