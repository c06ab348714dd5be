"""EWC and LwF at 2 processes reproduce one process (relative 1e-5 on every loss): EWC at TP=2
and at DP=2 under ZeRO-1/2 (theta* and F sharded like the fp32 master partitions), LwF at TP=2
(vocab-parallel log-softmax normalizers and KL sums reduced over TP)."""

from __future__ import annotations

import os
import tempfile

import pytest

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]

EWC = ["--ewc-weight", "1e6", "--ewc-num-iterations", "2"]
LWF = ["--lwf-weight", "20", "--lwf-kl", "--lwf-temperature", "2", "--lwf-reduction", "batchmean"]


def _stage(env: DistEnv, root: str, flags: list[str], stage1: list[str] | None) -> list[float]:
    """Stage 0 (one step, saved) when ``stage1`` is None, else stage 1 from it (one train() per
    process: a second rendezvous in the same forked child can hang)."""
    s0 = os.path.join(root, "s0")
    if stage1 is None:
        argv = ["--train-iters", "1", "--save", s0, *flags]
    else:
        argv = ["--train-iters", "4", "--load", s0, "--finetune", *flags, *stage1]
    return list(train(tiny_plan(*argv, env=env), env).losses)


def _run(flags: list[str], stage1: list[str], world_size: int) -> list[list[float]]:
    root = tempfile.mkdtemp()
    if world_size == 1:
        _stage(DistEnv(), root, flags, None)
        return [_stage(DistEnv(), root, flags, stage1)]
    run_distributed(_stage, root, flags, None)
    return run_distributed(_stage, root, flags, stage1)


@pytest.mark.parametrize("zero", ["1", "2"])
def test_ewc_at_dp2_zero_matches_one_process(zero):
    reference = _run(["--micro-batch-size", "4"], EWC, 1)[0]
    plain = _run(["--micro-batch-size", "4"], [], 1)[0]
    assert abs(reference[-1] - plain[-1]) > 1e-4  # the penalty matters in these steps
    ranks = _run(["--micro-batch-size", "2", "--zero-stage", zero], EWC, 2)
    assert ranks[0] == ranks[1]
    assert ranks[0] == pytest.approx(reference, rel=1e-5)


def test_ewc_at_tp2_matches_one_process():
    reference = _run([], EWC, 1)[0]
    ranks = _run(["--tensor-model-parallel-size", "2"], EWC, 2)
    assert ranks[0] == pytest.approx(reference, rel=1e-5)


def test_lwf_at_tp2_matches_one_process():
    reference = _run([], LWF, 1)[0]
    plain = _run([], [], 1)[0]
    assert abs(reference[-1] - plain[-1]) > 1e-4
    ranks = _run(["--tensor-model-parallel-size", "2"], LWF, 2)
    assert ranks[0] == pytest.approx(reference, rel=1e-5)
    hard = _run([], ["--lwf-weight", "1"], 1)[0]
    ranks = _run(["--tensor-model-parallel-size", "2"], ["--lwf-weight", "1"], 2)
    assert ranks[0] == pytest.approx(hard, rel=1e-5)
