"""Element-wise optimizers from pytorch-optimizer (lion, adopt) under ZeRO-1 at 2 processes
reproduce the single-process losses: on flat fp32 shards their update is the same per element.

Tolerance as in test_parallel_equivalence: relative 1e-4 on every step's loss.
"""

from __future__ import annotations

import pytest

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed

STEPS = {"lion": ["--lr", "3e-3"], "adopt": ["--lr", "1e-2"]}


def _losses(env: DistEnv, flags: list[str]) -> list[float]:
    result = train(tiny_plan("--train-iters", "4", *flags, env=env), env)
    return [*result.losses, result.valid_loss]


@pytest.mark.parametrize("name", sorted(STEPS))
def test_zero1_at_two_processes_matches_single_process(name):
    flags = ["--optimizer", name, *STEPS[name]]
    # DP=2 with micro-batch 2 sees the same 4 samples per step as one process with micro-batch 4.
    reference = _losses(DistEnv(), [*flags, "--micro-batch-size", "4"])
    ranks = run_distributed(_losses, [*flags, "--micro-batch-size", "2", "--zero-stage", "1"])
    assert ranks[0] == ranks[1]
    assert ranks[0] == pytest.approx(reference, rel=1e-4)
