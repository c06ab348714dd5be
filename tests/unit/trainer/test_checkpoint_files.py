"""Checkpoint files on one process: what the metadata holds, pruning, corrupt files, universal
conversion of every optimizer's state, and the conversion tool."""

from __future__ import annotations

import json
import os
import signal

import pytest

from megatron.checkpointing.checkpoint import METADATA_FILE, PRE_COOLDOWN_FILE, CheckpointError
from megatron.checkpointing.convert import convert
from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import tiny_plan
from tools import convert_checkpoint

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--hidden-size", "--train-iters", "--optimizer", "--lr-decay-style",
    "--lr-constant-plus-cooldown", "--save", "--load", "--save-interval", "--finetune", "--no-load-optim",
    "--universal-checkpoint", "--override-opt-param-scheduler", "--exit-interval")


def run(*flags: str):
    return train(tiny_plan(*flags), DistEnv())


def test_metadata_names_the_tokenizer_code_and_layout(tmp_path):
    save = str(tmp_path / "ckpt")
    run("--train-iters", "2", "--save", save)
    with open(os.path.join(save, "global_step2", METADATA_FILE)) as f:
        meta = json.load(f)
    assert meta["tokenizer"]["type"] == "byte"
    assert meta["code_version"].startswith("megatron-ds-cpt ")
    assert (meta["plan"]["tp"], meta["plan"]["pp"], meta["plan"]["dp"], meta["zero_stage"]) == (1, 1, 1, 0)


def test_keep_last_n_keeps_the_newest_and_the_pre_cooldown_checkpoint(tmp_path):
    save = str(tmp_path / "ckpt")
    # Cooldown over the last 40% of 10 steps: the checkpoint after step 6 is the peak-LR one.
    run("--train-iters", "10", "--save", save, "--save-interval", "2", "--keep-last-n-checkpoints", "2",
        "--lr-decay-style", "constant", "--lr-constant-plus-cooldown", "--lr-constant-plus-cooldown-frac", "0.4")
    steps = sorted(e for e in os.listdir(save) if e.startswith("global_step"))
    with open(os.path.join(save, PRE_COOLDOWN_FILE)) as f:
        assert f.read() == "global_step6"
    assert steps == ["global_step10", "global_step6", "global_step8"]


def test_truncated_checkpoint_is_refused_with_the_file(tmp_path):
    save = str(tmp_path / "ckpt")
    run("--train-iters", "2", "--save", save)
    path = os.path.join(save, "global_step2", "mp_rank_00_model_states.pt")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match=r"cannot load .*global_step2"):
        run("--train-iters", "4", "--load", save)
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states\.pt: unreadable .*truncated or corrupt"):
        convert(save)


def test_checkpoint_without_metadata_is_refused(tmp_path):
    save = str(tmp_path / "ckpt")
    run("--train-iters", "2", "--save", save)
    os.remove(os.path.join(save, "global_step2", METADATA_FILE))
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(CheckpointError, match="incomplete or was not written by this framework"):
        run("--train-iters", "4", "--load", save)
    # The run's graceful-stop handler is gone with it (a leaked one kept forked workers alive).
    assert signal.getsignal(signal.SIGTERM) is handler


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "lion", "muon", "dshampoo", "schedulefree", "sophia"])
def test_universal_round_trip_continues_every_optimizer(tmp_path, optimizer):
    flags = ["--optimizer", optimizer, "--train-iters", "5", "--hidden-size", "32"]
    if optimizer == "schedulefree":
        flags += ["--lr-decay-style", "constant"]
    if optimizer == "dshampoo":
        flags += ["--dshampoo-start-preconditioning-step", "1", "--dshampoo-precondition-frequency", "1"]
    if optimizer == "sophia":
        flags += ["--sophia-hessian-interval", "2"]
    save = str(tmp_path / "ckpt")
    full = run(*flags)
    run(*flags, "--save", save, "--exit-interval", "3")
    convert(save)
    resumed = run(*flags, "--load", save, "--universal-checkpoint")
    assert resumed.losses == pytest.approx(full.losses[3:], rel=1e-6)
    assert resumed.valid_loss == pytest.approx(full.valid_loss, rel=1e-6)


def test_universal_with_no_load_optim_and_finetune(tmp_path, capsys):
    save = str(tmp_path / "ckpt")
    run("--train-iters", "4", "--save", save)
    convert(save)
    tuned = run("--train-iters", "2", "--load", save, "--universal-checkpoint", "--finetune")
    assert tuned.iteration == 2
    assert "--finetune: loaded weights of" in capsys.readouterr().out
    fresh_optimizer = run("--train-iters", "6", "--load", save, "--universal-checkpoint", "--no-load-optim",
                          "--override-opt-param-scheduler")
    assert fresh_optimizer.iteration == 6 and len(fresh_optimizer.losses) == 2


def test_convert_tool_reports_and_rejects(tmp_path, capsys):
    save = str(tmp_path / "ckpt")
    run("--train-iters", "2", "--save", save)
    assert convert_checkpoint.main(["--input", save, "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "parameters, states ['exp_avg', 'exp_avg_sq', 'fp32', 'step']" in err
    assert "verified in" in err
    with open(os.path.join(save, "latest_universal")) as f:
        assert f.read() == "global_step2_universal"
    assert convert_checkpoint.main(["--input", save]) == 2
    assert "--output: " in capsys.readouterr().err
    assert convert_checkpoint.main(["--input", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
