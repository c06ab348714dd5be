"""PhaseTimers: mean milliseconds per step of each phase, reset by collect."""

from __future__ import annotations

import time

import torch

from megatron.trainer.timers import PhaseTimers


def test_mean_ms_per_step_and_reset():
    timers = PhaseTimers(True, torch.device("cpu"))
    for _ in range(2):
        with timers.phase("forward"):
            time.sleep(0.02)
        for _ in range(2):  # two micro-batches: both count towards the step
            with timers.phase("optimizer"):
                time.sleep(0.005)
        timers.step_done()
    ms = timers.collect()
    # sleep() lasts at least as asked; a loaded machine only adds.
    assert 20 <= ms["forward"] < 60
    assert 10 <= ms["optimizer"] < 40
    assert timers.collect() == {}


def test_disabled_timers_record_nothing():
    timers = PhaseTimers(False, torch.device("cpu"))
    with timers.phase("forward"):
        pass
    timers.step_done()
    assert timers.collect() == {}
