"""muP/CompleteP under TP=2, PP=2 and ZeRO-1 at 2 processes reproduce the single-process losses:
the multipliers are the same on every TP rank and pipeline stage, and the per-group LR/eps
survive DeepSpeed's optimizer wrappers. Tolerance as in test_parallel_equivalence (rel 1e-4)."""

from __future__ import annotations

import pytest

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed

STEPS = ["--train-iters", "4", "--lr", "1e-2"]
COMPLETEP = ["--hidden-size", "32", "--num-layers", "4", "--scaling-recipe", "completep",
             "--mup-base-hidden-size", "16", "--mup-base-num-layers", "2",
             "--mup-embedding-mult", "2", "--mup-output-mult", "1.5"]  # fmt: skip


def _losses(env: DistEnv, flags: list[str]) -> list[float]:
    result = train(tiny_plan(*STEPS, *flags, env=env), env)
    return [*result.losses, result.valid_loss]


def test_tensor_parallel_matches_single_process_with_completep():
    reference = _losses(DistEnv(), COMPLETEP)
    assert reference != pytest.approx(_losses(DistEnv(), COMPLETEP[:4]), rel=1e-3)  # muP is on
    ranks = run_distributed(_losses, ["--tensor-model-parallel-size", "2", *COMPLETEP])
    assert ranks[0] == ranks[1]
    assert ranks[0] == pytest.approx(reference, rel=1e-4)


def test_pipeline_parallel_matches_single_process_with_completep():
    flags = ["--gradient-accumulation-steps", "2", "--untie-embeddings-and-output-weights", *COMPLETEP]
    reference = _losses(DistEnv(), flags)
    ranks = run_distributed(_losses, ["--pipeline-model-parallel-size", "2", *flags])
    assert ranks[0] == pytest.approx(reference, rel=1e-4)
    assert ranks[1] == pytest.approx(reference, rel=1e-4)


def test_zero1_keeps_the_group_table():
    reference = _losses(DistEnv(), ["--micro-batch-size", "4", *COMPLETEP])
    ranks = run_distributed(_losses, ["--micro-batch-size", "2", "--zero-stage", "1", *COMPLETEP])
    assert ranks[0] == pytest.approx(reference, rel=1e-4)
