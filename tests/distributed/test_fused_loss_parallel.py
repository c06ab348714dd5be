"""--fused-linear-cross-entropy at TP=2 (vocab split over 2 gloo ranks) against one process.

Function level: each rank holds half of the head's rows; the fused per-token losses, the hidden
gradient (after the TP all-reduce of the column-parallel input) and each rank's rows of the
weight gradient equal the unfused single-process numbers. Training level: a few steps with the
flag follow the loss curve of the unfused run, at TP=1 and TP=2.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed

STEPS = ["--train-iters", "4", "--lr", "1e-2"]
FUSED = ["--fused-linear-cross-entropy", "--fused-ce-chunk-tokens", "12"]  # 32 tokens: 12+12+8


def _problem():
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 11, 16, generator=g)
    weight = torch.randn(64, 16, generator=g) * 0.3
    labels = torch.randint(0, 64, (2, 11), generator=g)
    mask = (torch.rand(2, 11, generator=g) > 0.25).float()
    return hidden, weight, labels, mask


def _grads(losses_fn, hidden, weight, labels, mask):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    losses = losses_fn(h, w, labels)
    ((losses * mask).sum() / mask.sum()).backward()
    return losses.detach(), h.grad, w.grad


def _unfused(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # What token_losses computes at TP=1; here without a process group, as the parent forks.
    return F.cross_entropy((h @ w.t()).flatten(0, 1), y.flatten(), reduction="none").view_as(y)


def _tp2_fused(env: DistEnv, chunk: int) -> list[torch.Tensor]:
    from megatron.distributed import init_distributed
    from megatron.model.fused_loss import fused_token_losses

    ctx = init_distributed(tiny_plan("--train-iters", "1", "--tensor-model-parallel-size", "2", env=env), env)
    hidden, weight, labels, mask = _problem()
    rows = weight.shape[0] // 2
    local = weight[ctx.tp_rank * rows:(ctx.tp_rank + 1) * rows]
    out = _grads(lambda h, w, y: fused_token_losses(h, w, y, chunk), hidden, local, labels, mask)
    return [t.tolist() for t in out]  # plain lists: a tensor's shared memory dies with the child


@pytest.mark.parametrize("chunk", [5, 22, 64])
def test_fused_loss_at_tp2_equals_single_process_unfused(chunk):
    hidden, weight, labels, mask = _problem()
    ref_losses, ref_h, ref_w = _grads(_unfused, hidden, weight, labels, mask)
    ranks = run_distributed(_tp2_fused, chunk)
    for rank, result in enumerate(ranks):
        losses, grad_h, grad_w = (torch.tensor(r) for r in result)
        torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_h, ref_h, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grad_w, ref_w[rank * 32:(rank + 1) * 32], rtol=1e-5, atol=1e-7)


def _losses(env: DistEnv, flags: list[str]) -> list[float]:
    result = train(tiny_plan(*STEPS, *flags, env=env), env)
    return [*result.losses, result.valid_loss]


@pytest.mark.slow  # ~20 s: three 4-step runs
@pytest.mark.parametrize(
    "model_flags", [[], ["--untie-embeddings-and-output-weights"]], ids=["tied", "untied"]
)
def test_training_with_flag_follows_unfused_curve_at_tp1_and_tp2(model_flags):
    reference = _losses(DistEnv(), model_flags)
    fused = _losses(DistEnv(), [*model_flags, *FUSED])
    assert fused == pytest.approx(reference, rel=1e-5)
    ranks = run_distributed(_losses, ["--tensor-model-parallel-size", "2", *model_flags, *FUSED])
    assert ranks[0] == ranks[1]
    assert ranks[0] == pytest.approx(reference, rel=1e-4)


@pytest.mark.slow  # ~20 s
def test_flag_with_zero2_data_parallel_and_bf16():
    """ZeRO-2 at DP=2 (DeepSpeed's gradient hooks see the fused head's weight gradient) equals one
    unfused process; a bf16 run with the flag follows the unfused bf16 run (observed 3e-5 relative)."""
    reference = _losses(DistEnv(), ["--micro-batch-size", "4"])
    ranks = run_distributed(_losses, ["--micro-batch-size", "2", "--zero-stage", "2", *FUSED])
    assert ranks[0] == ranks[1]
    assert ranks[0] == pytest.approx(reference, rel=1e-4)
    bf16 = _losses(DistEnv(), ["--bf16"])
    assert _losses(DistEnv(), ["--bf16", *FUSED]) == pytest.approx(bf16, rel=1e-3)  # bf16 vs fp32: ~1e-2


@pytest.mark.slow  # ~10 s: two 4-step runs
def test_masked_diffusion_with_flag_follows_unfused_curve():
    """``--objective mdm`` weights the per-token losses by m / p after the model: the fused path
    returns the same per-token losses, so the weighted curve (and 2-draw validation) is the same."""
    mdm = ["--objective", "mdm", "--num-mc", "2", "--ar-ratio", "0.25"]
    reference = _losses(DistEnv(), mdm)
    assert _losses(DistEnv(), [*mdm, *FUSED]) == pytest.approx(reference, rel=1e-5)
