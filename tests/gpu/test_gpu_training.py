"""Training on one GPU in bf16 (issue 17): ``--compile`` equals eager, the fused linear +
cross-entropy equals the unfused loss, a ZeRO-1 checkpoint converted to universal resumes at
ZeRO-0, and Muon and Sophia steps run and learn.

Each test trains the tiny GPT (hidden 64, 2 layers) a few steps on the learnable mock stream
(counting sequences) through ``train()``, the code path of ``pretrain_gpt.py``. A flag this
checkout does not define yet skips its test by name.

bf16 tolerances: losses of two runs that differ only in kernel fusion or summation order agree
to ~1% over a few steps (bf16 rounding, 2^-9 relative, compounds through the updates).
"""

from __future__ import annotations

import math

import pytest
import torch

from megatron.checkpointing.convert import convert
from megatron.config import DistEnv
from megatron.config.schema import knob_by_flag
from megatron.trainer.loop import train
from tests.helpers import tiny_plan

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.deepspeed,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

LLAMA = ["--swiglu", "--normalization", "rmsnorm", "--disable-bias-linear", "--hidden-size", "64",
         "--num-attention-heads", "4", "--num-key-value-heads", "2",
         "--untie-embeddings-and-output-weights", "--seq-length", "64", "--micro-batch-size", "4",
         "--lr", "3e-3"]


def needs_flags(*flags: str) -> None:
    missing = [f for f in flags if f not in knob_by_flag()]
    if missing:
        pytest.skip(f"this checkout's CLI has no {' '.join(missing)}")


def losses(*flags: str):
    return train(tiny_plan(*LLAMA, *flags), DistEnv())


def assert_learns(run_losses: tuple[float, ...]) -> None:
    assert all(math.isfinite(x) for x in run_losses), run_losses
    assert run_losses[-1] < run_losses[0] - 0.1, run_losses


@pytest.mark.parametrize("dtype", [["--bf16"], []], ids=["bf16", "fp32"])
def test_compile_equals_eager(dtype):
    needs_flags("--compile")
    eager = losses("--train-iters", "6", *dtype).losses
    compiled = losses("--train-iters", "6", "--compile", *dtype).losses
    assert_learns(eager)
    assert compiled == pytest.approx(eager, rel=2e-2 if dtype else 1e-4)


@pytest.mark.parametrize("dtype", [["--bf16"], []], ids=["bf16", "fp32"])
def test_fused_linear_cross_entropy_equals_unfused(dtype):
    needs_flags("--fused-linear-cross-entropy", "--fused-ce-chunk-tokens")
    # 4 x 64 tokens per micro-batch in chunks of 96: uneven chunks, a partial last one.
    unfused = losses("--train-iters", "6", *dtype).losses
    fused = losses("--train-iters", "6", "--fused-linear-cross-entropy",
                   "--fused-ce-chunk-tokens", "96", *dtype).losses
    assert_learns(unfused)
    assert fused == pytest.approx(unfused, rel=1e-2 if dtype else 1e-4)


def test_bf16_zero1_checkpoint_resumes_at_zero0_through_universal(tmp_path):
    save = str(tmp_path / "ckpt")
    full = losses("--bf16", "--zero-stage", "1", "--train-iters", "6")
    losses("--bf16", "--zero-stage", "1", "--train-iters", "6", "--exit-interval", "3", "--save", save)
    report = convert(save)
    assert {"fp32", "exp_avg", "exp_avg_sq"} <= set(report.states)
    resumed = losses("--bf16", "--zero-stage", "0", "--train-iters", "6", "--load", save,
                     "--universal-checkpoint")
    assert len(resumed.losses) == 3
    # Continues the same curve (fp32 master weights and Adam moments carried over), and not a
    # fresh start: a fresh model's first loss is far above the checkpoint's.
    assert resumed.losses == pytest.approx(full.losses[3:], rel=1e-2)
    assert resumed.valid_loss == pytest.approx(full.valid_loss, rel=1e-2)
    assert resumed.losses[0] < full.losses[0] - 0.1


@pytest.mark.parametrize(
    "flags",
    [
        ["--optimizer", "muon", "--zero-stage", "0"],
        ["--optimizer", "muon", "--zero-stage", "1"],
        ["--optimizer", "sophia", "--sophia-hessian-interval", "2", "--zero-stage", "0"],
        ["--optimizer", "sophia", "--sophia-hessian-interval", "2", "--zero-stage", "1"],
    ],
    ids=["muon-zero0", "muon-zero1", "sophia-zero0", "sophia-zero1"],
)
def test_muon_and_sophia_bf16_steps_run_and_learn(flags):
    result = losses("--bf16", "--train-iters", "8", *flags)
    assert len(result.losses) == 8
    assert_learns(result.losses)
