"""Resuming and the LR schedule: mid-cooldown continuity, explicit override / keep, pre-cooldown mark."""

from __future__ import annotations

import os

import pytest

from megatron.checkpointing.checkpoint import PRE_COOLDOWN_FILE
from megatron.config import ConfigError, DistEnv
from megatron.trainer.loop import train
from tests.helpers import tiny_plan

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--train-iters", "--lr", "--min-lr", "--lr-decay-style", "--lr-warmup-iters",
    "--lr-constant-plus-cooldown", "--save", "--load", "--override-opt-param-scheduler",
    "--use-checkpoint-opt-param-scheduler", "--exit-interval", "--log-interval")

WSD = ["--train-iters", "10", "--log-interval", "1", "--lr-decay-style", "constant", "--lr-constant-plus-cooldown",
       "--lr-constant-plus-cooldown-frac", "0.4", "--lr-warmup-iters", "2", "--min-lr", "1e-4"]


def run(*flags: str):
    return train(tiny_plan(*flags), DistEnv())


def lrs(capsys) -> list[float]:
    out = capsys.readouterr().out
    return [float(line.split("| lr ")[1].split()[0]) for line in out.splitlines() if "| lr " in line]


@pytest.mark.parametrize("stop", ["1", "8"], ids=["mid-warmup", "mid-cooldown"])
def test_wsd_resumed_mid_phase_continues_the_curve_and_marks_the_peak_checkpoint(tmp_path, capsys, stop):
    save = str(tmp_path / "ckpt")
    full = run(*WSD)
    full_lrs = lrs(capsys)
    # Warmup covers steps 0-1, the cooldown steps 6-9.
    first = run(*WSD, "--save", save, "--exit-interval", stop)
    second = run(*WSD, "--load", save, "--save", save)
    assert first.losses + second.losses == full.losses
    assert lrs(capsys) == full_lrs
    with open(os.path.join(save, PRE_COOLDOWN_FILE)) as f:
        assert f.read() == "global_step6"  # LR still at its peak there
    assert os.path.isdir(os.path.join(save, "global_step6"))


def test_changed_schedule_needs_an_explicit_choice(tmp_path, capsys):
    save = str(tmp_path / "ckpt")
    run("--train-iters", "6", "--lr", "3e-3", "--save", save, "--exit-interval", "3")
    with pytest.raises(ConfigError, match="--use-checkpoint-opt-param-scheduler .* --override-opt-param-scheduler"):
        run("--train-iters", "6", "--lr", "1e-3", "--load", save)
    capsys.readouterr()
    run("--train-iters", "6", "--lr", "1e-3", "--load", save, "--use-checkpoint-opt-param-scheduler")
    kept = lrs(capsys)
    run("--train-iters", "6", "--lr", "1e-3", "--load", save, "--override-opt-param-scheduler")
    overridden = lrs(capsys)
    assert kept[0] == pytest.approx(3e-3 * 0.5 * (1 + __import__("math").cos(__import__("math").pi * 3 / 6)), rel=1e-3)
    assert overridden[0] == pytest.approx(kept[0] / 3, rel=1e-3)
    with pytest.raises(ConfigError, match="cannot be combined"):
        run("--train-iters", "6", "--load", save, "--use-checkpoint-opt-param-scheduler", "--override-opt-param-scheduler")
