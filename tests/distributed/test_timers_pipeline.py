"""--log-timers-to-tensorboard under pipeline parallelism: DeepSpeed interleaves forward and
backward inside train_batch, so the data phase and the whole step are timed (issue 22)."""

from __future__ import annotations

import glob

import pytest

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed


def _train(env: DistEnv, tb: str) -> float:
    flags = ["--train-iters", "2", "--pipeline-model-parallel-size", "2", "--gradient-accumulation-steps", "2",
             "--log-timers-to-tensorboard", "--log-batch-size-to-tensorboard", "--tensorboard-dir", tb]
    return train(tiny_plan(*flags, env=env), env).losses[-1]


def test_pipeline_logs_data_and_step_timers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_distributed(_train, str(tmp_path))
    events = glob.glob(f"{tmp_path}/events.*")
    assert len(events) == 1  # the logging rank only
    acc = EventAccumulator(events[0])
    acc.Reload()
    timers = {t for t in acc.Tags()["scalars"] if t.startswith("timers/")}
    assert timers == {"timers/data_ms", "timers/step_ms"}
    assert all(e.value > 0 for t in timers for e in acc.Scalars(t))
    assert [e.value for e in acc.Scalars("train/batch_size")] == [4, 4]
