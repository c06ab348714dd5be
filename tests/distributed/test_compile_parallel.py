"""``--compile`` with megatron-core's TP layers (their collectives inside the compiled layer)
and with DeepSpeed's pipeline engine: 2 processes reproduce the eager single-process losses."""

from __future__ import annotations

import pytest

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]

STEPS = ["--train-iters", "3", "--lr", "1e-2", "--gradient-accumulation-steps", "2"]
COMPILE = ["--compile", "--compile-backend", "aot_eager"]


def _losses(env: DistEnv, flags: list[str]) -> list[float]:
    result = train(tiny_plan(*STEPS, *flags, env=env), env)
    return [*result.losses, result.valid_loss]


@pytest.mark.parametrize("layout", [["--tensor-model-parallel-size", "2"],
                                    ["--pipeline-model-parallel-size", "2"]], ids=["tp2", "pp2"])
def test_compiled_layers_at_two_processes_match_eager_single_process(layout):
    reference = _losses(DistEnv(), [])
    ranks = run_distributed(_losses, [*layout, *COMPILE], timeout_s=600.0)
    assert ranks[0] == pytest.approx(reference, rel=1e-4)
    assert ranks[1] == pytest.approx(reference, rel=1e-4)
