"""muP in a training run: the group table drives the optimizer and the schedule, resume is
bit-exact under the same recipe and refused under another, --mup-coord-check logs activations."""

from __future__ import annotations

import json
import os

import pytest

from megatron.checkpointing.checkpoint import METADATA_FILE
from megatron.config import ConfigError, DistEnv
from megatron.trainer.loop import train
from tests.helpers import tiny_plan

MUP = ("--hidden-size", "32", "--scaling-recipe", "completep", "--mup-base-hidden-size", "16",
       "--mup-base-num-layers", "1", "--lr", "1e-2", "--min-lr", "1e-3",
       "--lr-warmup-iters", "2")  # fmt: skip


def run(*flags: str):
    return train(tiny_plan(*flags), DistEnv())


def test_groups_follow_the_table_under_the_schedule(dist_world1):
    from megatron.model.gpt import GPTModel
    from megatron.optimizer.registry import get_optimizer_spec
    from megatron.scaling.groups import build_param_groups
    from megatron.schedules.registry import build_schedule_fn
    from megatron.schedules.scheduler import LRScheduler

    plan = tiny_plan("--train-iters", "10", *MUP)
    groups = build_param_groups(GPTModel(plan.model).named_parameters(), plan, "elementwise")
    optimizer = get_optimizer_spec("adamw").build(groups, plan.config.optim, None)
    fn, fingerprint = build_schedule_fn(plan)
    scheduler = LRScheduler(optimizer, fn, fingerprint, plan.config.optim.lr)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    # m_N = 2, m_L = 2, alpha 1: hidden LR / 2, eps / 4; min-lr scales with the group.
    assert by_name["hidden_matrix"]["eps"] == 1e-8 / 4 and by_name["embedding"]["eps"] == 1e-8
    for step in (0, 1, 5, 10):
        scheduler.set_step(step)
        assert by_name["hidden_matrix"]["lr"] == by_name["embedding"]["lr"] / 2
        assert by_name["hidden_vector"]["lr"] == by_name["embedding"]["lr"]
    assert by_name["hidden_matrix"]["lr"] == pytest.approx(1e-3 / 2)  # the floor, scaled
    assert scheduler.current_lr() == pytest.approx(1e-3)  # the logged LR is the embedding's


def test_resume_same_recipe_bit_exact_other_recipe_refused(tmp_path):
    save = str(tmp_path / "ckpt")
    full = run("--train-iters", "6", *MUP)
    first = run("--train-iters", "6", *MUP, "--save", save, "--exit-interval", "3")
    second = run("--train-iters", "6", *MUP, "--save", save, "--load", save)
    assert first.losses + second.losses == full.losses
    assert sum(full.losses[-2:]) < sum(full.losses[:2])
    with open(os.path.join(save, "global_step3", METADATA_FILE)) as f:
        recorded = json.load(f)["plan"]["scaling"]
    assert (recorded["recipe"], recorded["base_hidden_size"], recorded["base_num_layers"]) == ("completep", 16, 1)
    other_base = [f if f != "16" else "8" for f in MUP]
    with pytest.raises(ConfigError, match="base_hidden_size: checkpoint 16, this run 8"):
        run("--train-iters", "6", *other_base, "--load", save)
    with pytest.raises(ConfigError, match="recipe: checkpoint 'completep', this run 'none'"):
        run("--train-iters", "6", "--hidden-size", "32", "--load", save)


def test_mup_coord_check_logs_activations_in_training(capsys):
    run("--train-iters", "3", *MUP, "--mup-coord-check")
    out = capsys.readouterr().out
    lines = [line.split("] ", 1)[1] for line in out.splitlines() if "] coord check iter" in line]
    assert [line.split(":")[0] for line in lines] == [f"coord check iter {i}" for i in (1, 2, 3)]
    names = [item.rsplit(" ", 1)[0] for item in lines[0].split(": ", 1)[1].split(" | ")]
    assert names == ["embedding", "last_block", "layers.0.attention", "layers.0.mlp",
                     "layers.1.attention", "layers.1.mlp", "logits"]  # fmt: skip
    # The start-of-run table: one row per group with its LR, WD and eps.
    assert "muP groups | hidden_matrix" in out and "5.000e-03" in out


def test_launcher_never_turns_mup_on_by_itself(repo_root, tmp_path, shakespeare_prefix):
    from tests.unit.launcher.test_train_alcf import launch, plan_of

    common = dict(prefix=shakespeare_prefix, DATA_FILE_LIST="{list}", TRAIN_ITERS="4", NLAYERS="4",
                  HIDDEN="64", HEADS="4", TOKENIZER_TYPE="byte", NPROC="1")  # fmt: skip
    out = launch(repo_root, tmp_path, **common)
    assert out.returncode == 0, out.stderr
    assert plan_of(out.stdout.split("[train_alcf.sh] command:")[1])["plan"]["scaling"]["recipe"] == "none"
    out = launch(repo_root, tmp_path, MUP_BASE_WIDTH="32", **common)
    assert out.returncode == 2
    assert "--mup-base-hidden-size: has no effect without a scaling recipe" in out.stderr
    out = launch(repo_root, tmp_path, SCALING_RECIPE="completep", MUP_BASE_WIDTH="32", DEPTH_BASE="2", **common)
    assert out.returncode == 0, out.stderr
    scaling = plan_of(out.stdout.split("[train_alcf.sh] command:")[1])["plan"]["scaling"]
    assert (scaling["recipe"], scaling["width_mult"], scaling["depth_mult"]) == ("completep", 2.0, 2.0)
