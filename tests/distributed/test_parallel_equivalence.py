"""TP=2, PP=2 and ZeRO 1/2/3 at 2 processes reproduce the single-process losses.

Tolerance: relative 1e-4 on every step's loss. The layouts hold the same full weights (per-tensor
seeded init), so the only differences are fp32 summation orders inside the split matmuls and
all-reduces (observed ~1e-7 relative).
"""

from __future__ import annotations

import pytest

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed

STEPS = ["--train-iters", "5", "--lr", "1e-2"]


def _losses(env: DistEnv, flags: list[str]) -> list[float]:
    result = train(tiny_plan(*STEPS, *flags, env=env), env)
    return [*result.losses, result.valid_loss]


def single(*flags: str) -> list[float]:
    return _losses(DistEnv(), list(flags))


@pytest.mark.parametrize(
    "model_flags",
    [
        [],
        ["--swiglu", "--num-key-value-heads", "2", "--untie-embeddings-and-output-weights", "--normalization", "rmsnorm"],
    ],
    ids=["gelu-tied", "swiglu-gqa-untied"],
)
def test_tensor_parallel_matches_single_process(model_flags):
    reference = single(*model_flags)
    ranks = run_distributed(_losses, ["--tensor-model-parallel-size", "2", *model_flags])
    assert ranks[0] == ranks[1]
    assert ranks[0] == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize("tie", [[], ["--untie-embeddings-and-output-weights"]], ids=["tied", "untied"])
def test_pipeline_parallel_matches_single_process(tie):
    flags = ["--gradient-accumulation-steps", "2", *tie]
    reference = single(*flags)
    ranks = run_distributed(_losses, ["--pipeline-model-parallel-size", "2", *flags])
    assert ranks[0] == pytest.approx(reference, rel=1e-4)
    assert ranks[1] == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize("zero", ["0", "1", "2", "3"])
def test_zero_stages_at_two_processes_match_single_process(zero):
    # DP=2 with micro-batch 2 sees the same 4 samples per step as one process with micro-batch 4.
    reference = single("--micro-batch-size", "4")
    ranks = run_distributed(_losses, ["--micro-batch-size", "2", "--zero-stage", zero])
    assert ranks[0] == ranks[1]
    assert ranks[0] == pytest.approx(reference, rel=1e-4)
