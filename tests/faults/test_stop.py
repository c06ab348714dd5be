"""Stopped is not done: the trainer exits 75 when it stops early; a kill switch ends a job chain
(the run that finds it at start consumes it and exits 0 without training)."""

from __future__ import annotations

import os

import pytest

import pretrain_gpt
from megatron.trainer.loop import Trainer
from tests.helpers import tiny_args


def test_early_stop_exits_75_and_the_next_run_consumes_the_kill_switch(tmp_path, monkeypatch):
    save, stop = str(tmp_path / "ckpt"), str(tmp_path / "STOP")
    step = Trainer.train_step

    def touch_after_first(self, state):  # noqa: ANN001, ANN202
        step(self, state)
        if state.iteration == 1:
            open(stop, "w").close()

    monkeypatch.setattr(Trainer, "train_step", touch_after_first)
    flags = tiny_args("--train-iters", "5", "--save", save, "--load", save, "--kill-switch-file", stop,
                      "--lr-decay-style", "constant")
    assert pretrain_gpt.main(flags) == 75
    assert os.path.exists(stop)  # left for the next job of the chain
    assert open(os.path.join(save, "latest")).read() == "global_step1"
    monkeypatch.setattr(Trainer, "train_step", step)
    assert pretrain_gpt.main(flags) == 0  # the requeued job: consumes it, trains nothing
    assert not os.path.exists(stop) and open(os.path.join(save, "latest")).read() == "global_step1"
    assert pretrain_gpt.main(flags) == 0  # and the next one trains to the end
    assert open(os.path.join(save, "latest")).read() == "global_step5"


@pytest.mark.slow
def test_exit_interval_is_a_stop_with_work_left(tmp_path):
    assert pretrain_gpt.main(tiny_args("--train-iters", "4", "--exit-interval", "2")) == 75
    assert pretrain_gpt.main(tiny_args("--train-iters", "2")) == 0
