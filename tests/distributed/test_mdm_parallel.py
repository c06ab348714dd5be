"""``--objective mdm`` at TP=2, PP=2 and DP=2 with ZeRO 1/3 reproduces the single-process losses.

Every rank draws a sample's (t, mask) from (seed, split, sample index, draw), so the pipeline's
first stage (masked inputs) and last stage (clean labels, m / p weights) agree without
communication, and a data-parallel split sees the masks one process would. Validation uses
``--num-mc 2`` draws. Tolerance as in test_parallel_equivalence: relative 1e-4.
"""

from __future__ import annotations

import pytest

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed

MDM = ["--objective", "mdm", "--train-iters", "4", "--lr", "1e-2", "--num-mc", "2", "--ar-ratio", "0.25"]


def _losses(env: DistEnv, flags: list[str]) -> list[float]:
    result = train(tiny_plan(*MDM, *flags, env=env), env)
    return [*result.losses, result.valid_loss]


@pytest.mark.parametrize(
    ("layout", "reference"),
    [
        (["--tensor-model-parallel-size", "2"], []),
        (["--pipeline-model-parallel-size", "2", "--gradient-accumulation-steps", "2"],
         ["--gradient-accumulation-steps", "2"]),
        (["--micro-batch-size", "2", "--zero-stage", "1"], ["--micro-batch-size", "4"]),
        (["--micro-batch-size", "2", "--zero-stage", "3"], ["--micro-batch-size", "4"]),
    ],
    ids=["tp2", "pp2", "zero1-dp2", "zero3-dp2"],
)
def test_mdm_layouts_match_single_process(layout, reference):
    expected = _losses(DistEnv(), reference)
    ranks = run_distributed(_losses, layout)
    assert ranks[0] == pytest.approx(expected, rel=1e-4)
    assert ranks[1] == pytest.approx(expected, rel=1e-4)
