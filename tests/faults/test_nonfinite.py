"""Non-finite guard: a NaN/inf loss or gradient norm skips the update (weights and optimizer
states untouched, counted as skipped); N in a row stop the run without a new checkpoint."""

from __future__ import annotations

import os

import pytest
import torch

import pretrain_gpt
from megatron.config import ConfigError, DistEnv, parse_args
from megatron.plan import resolve
from megatron.trainer.engine import TrainEngine
from megatron.trainer.loop import Trainer, train
from megatron.trainer.nonfinite import NonFiniteLoss
from tests.helpers import tiny_args, tiny_plan


def _poison(monkeypatch, bad_steps: set[int]):
    """Make the loss NaN on the given (1-based) iterations; record weights after each step."""
    losses, weights, step = TrainEngine._losses, {}, Trainer.train_step
    current = {"iteration": 0}

    def poisoned(self, batch, meter):  # noqa: ANN001, ANN202
        loss = losses(self, batch, meter)
        return loss * float("nan") if current["iteration"] in bad_steps else loss

    def recorded(self, state):  # noqa: ANN001, ANN202
        current["iteration"] = state.iteration + 1
        step(self, state)
        weights[state.iteration] = [p.detach().clone() for p in self.engine.module.parameters()]
        weights[f"opt{state.iteration}"] = [
            v.clone() for s in self.engine.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]

    monkeypatch.setattr(TrainEngine, "_losses", poisoned)
    monkeypatch.setattr(Trainer, "train_step", recorded)
    return weights


@pytest.mark.parametrize("layout", [
    [], pytest.param(["--zero-stage", "2"], marks=pytest.mark.slow),
    pytest.param(["--zero-stage", "1", "--bf16"], marks=pytest.mark.slow)])
def test_a_nan_step_is_skipped_and_counted(monkeypatch, capsys, layout):
    weights = _poison(monkeypatch, {3, 4})
    result = train(tiny_plan("--train-iters", "6", *layout), DistEnv())
    assert result.iteration == 6
    for before, after in ((2, 4), ("opt2", "opt4")):  # the skipped steps changed nothing
        assert all(torch.equal(a, b) for a, b in zip(weights[before], weights[after], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(weights[4], weights[5], strict=True))
    assert all(torch.isfinite(p).all() for p in weights[6])
    out = capsys.readouterr().out
    assert "iteration 4: non-finite loss or gradient norm; update skipped (2 in a row" in out
    assert "skipped 1" in out.split("iter      3/6")[1].split("\n")[0]


def test_consecutive_nan_steps_stop_without_a_new_checkpoint(tmp_path, monkeypatch, capsys):
    save = str(tmp_path / "ckpt")
    _poison(monkeypatch, {3, 4, 5})
    with pytest.raises(NonFiniteLoss, match=r"--max-nonfinite-steps: 3 consecutive steps \(up to iteration 5\)"):
        train(tiny_plan("--train-iters", "8", "--save", save, "--save-interval", "2"), DistEnv())
    # Step 4 came inside the streak: no routine save there either.
    assert sorted(e for e in os.listdir(save) if e.startswith("global_step")) == ["global_step2"]
    assert open(os.path.join(save, "latest")).read() == "global_step2"
    # From the command line: one line, exit 1.
    capsys.readouterr()
    assert pretrain_gpt.main(tiny_args("--train-iters", "8", "--max-nonfinite-steps", "2")) == 1
    err = capsys.readouterr().err
    assert err.startswith("pretrain_gpt.py: error: --max-nonfinite-steps: 2 consecutive") and "Traceback" not in err


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_non_finite_lr_is_refused(value):
    with pytest.raises(ConfigError, match="--lr: must be"):
        args = tiny_args("--train-iters", "1")
        i = args.index("--lr")
        resolve(parse_args([*args[:i], *args[i + 2:], f"--lr={value}"]).config, DistEnv())
