"""The LR range test: the ramp, the suggestion, divergence stop, outputs, weights restored."""

from __future__ import annotations

import math

import pytest
import torch

from megatron.config import DistEnv
from megatron.distributed import destroy_distributed, init_distributed
from megatron.schedules import functions as F
from megatron.schedules.lr_finder import LRFinderRecorder, suggest_lr
from megatron.trainer.loop import Trainer
from tests.helpers import tiny_plan


def test_ramp_is_exponential_from_start_to_end():
    kw = {"total_steps": 100, "start": 1e-7, "end": 10.0, "base_lr": 1e-3}
    assert F.lr_range(0, **kw) * 1e-3 == pytest.approx(1e-7)
    assert F.lr_range(50, **kw) * 1e-3 == pytest.approx(math.sqrt(1e-7 * 10.0))
    assert F.lr_range(100, **kw) * 1e-3 == pytest.approx(10.0)


def test_suggestion_is_the_steepest_descent_and_min_over_10():
    lrs = [10 ** (-6 + i * 0.5) for i in range(11)]  # 1e-6 .. 10
    smoothed = [5.0, 5.0, 4.9, 4.5, 3.0, 2.0, 1.8, 1.7, 2.5, 6.0, 20.0]
    steepest, min_over_10 = suggest_lr(lrs, smoothed)
    assert steepest == lrs[4]  # the biggest drop per log-LR is around index 4
    assert min_over_10 == pytest.approx(lrs[7] / 10)


def test_recorder_debiases_and_flags_divergence():
    r = LRFinderRecorder()
    assert not r.record(1e-5, 3.0)
    assert r.smoothed[0] == pytest.approx(3.0)  # debiased: the first value is the loss itself
    for _ in range(5):
        r.record(1e-4, 3.0)
    assert r.record(1.0, 1e6)  # one huge loss pushes the smoothed loss past 4x the best
    assert r.record(1.0, float("nan"))


def test_range_test_on_the_tiny_gpt_suggests_an_lr_in_the_ramp_and_restores_the_weights(tmp_path):
    plan = tiny_plan("--train-iters", "60", "--lr-finder", "--lr-finder-start", "1e-5",
                     "--lr-finder-end", "10", "--lr-finder-dir", str(tmp_path), "--hidden-size", "32")
    ctx = init_distributed(plan, DistEnv())
    try:
        trainer = Trainer(plan, ctx)
        before = {k: v.clone() for k, v in trainer.engine.module.state_dict().items() if torch.is_tensor(v)}
        result = trainer.run()  # --lr-finder: the LRFinder callback makes it a probe run
        after = trainer.engine.module.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert not trainer.engine.optimizer.state  # no moments left behind
    finally:
        destroy_distributed()
    steepest, min_over_10 = result.lr_suggestion
    assert 1e-5 < steepest < 10 and 1e-6 < min_over_10 < 1
    assert (tmp_path / "lr_finder.csv").read_text().startswith("step,lr,loss,smoothed_loss")
    assert (tmp_path / "lr_finder.png").read_bytes()[:4] == b"\x89PNG"
