"""LwF (spec oracle 5c): the KL against torch's kl_div (TiC-LM's formula), elementmean x V ==
batchmean, KL = 0 and an unchanged first step at the stage start, argmax distillation, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron.config import ConfigError, DistEnv
from megatron.continual.lwf import lwf_loss, vocab_parallel_argmax
from megatron.trainer.loop import train
from tests.helpers import tiny_plan


def _logits(seed: int) -> torch.Tensor:
    return torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(seed)) * 3


def test_kl_matches_torch_kl_div_and_reductions_differ_by_v(dist_world1):
    teacher, student = _logits(0), _logits(1).requires_grad_()
    mask = torch.ones(2, 5)
    tau = 2.0
    element = lwf_loss(teacher, student, mask, kl=True, temperature=tau, reduction="elementmean")
    batch = lwf_loss(teacher, student, mask, kl=True, temperature=tau, reduction="batchmean")
    # TiC-LM: kl_div(log p_S, log p_T, log_target=True) with the default 'mean' (over B*L*V).
    reference = F.kl_div(F.log_softmax(student / tau, -1), F.log_softmax(teacher / tau, -1),
                         log_target=True, reduction="mean")
    torch.testing.assert_close(element, reference, rtol=1e-6, atol=0)
    torch.testing.assert_close(element * 64, batch, rtol=1e-6, atol=0)
    (grad,) = torch.autograd.grad(batch, student)
    expected = (F.softmax(student / tau, -1) - F.softmax(teacher / tau, -1)) / tau / 10
    torch.testing.assert_close(grad, expected.detach(), rtol=1e-5, atol=1e-7)
    same = lwf_loss(teacher, teacher.clone(), mask, kl=True, temperature=tau, reduction="batchmean")
    assert float(same) == 0.0


def test_hard_labels_are_cross_entropy_on_the_teacher_argmax(dist_world1):
    teacher, student = _logits(2), _logits(3)
    mask = torch.ones(2, 5)
    loss = lwf_loss(teacher, student, mask, kl=False, temperature=2.0, reduction="batchmean")
    labels = vocab_parallel_argmax(teacher)
    assert torch.equal(labels, teacher.argmax(-1))
    torch.testing.assert_close(loss, F.cross_entropy(student.flatten(0, 1), labels.flatten()))


@pytest.mark.deepspeed
def test_stage_start_kl_is_zero_and_first_step_equals_no_lwf(tmp_path):
    s0 = str(tmp_path / "s0")
    train(tiny_plan("--train-iters", "2", "--save", s0), DistEnv())

    def stage(*flags):
        return train(tiny_plan("--train-iters", "3", "--load", s0, "--finetune", *flags), DistEnv()).losses

    plain = stage()
    lwf = stage("--lwf-weight", "5", "--lwf-kl", "--lwf-reduction", "batchmean")
    # Teacher = student at the start: KL and its gradient vanish, so update 1 is the plain one.
    assert lwf[:2] == pytest.approx(plain[:2], rel=1e-6, abs=0)
    assert abs(lwf[2] - plain[2]) > 1e-5
    hard = stage("--lwf-weight", "1")  # argmax CE is not zero at the start: it changes update 1
    assert hard[0] == plain[0] and abs(hard[1] - plain[1]) > 1e-5


def test_bad_input():
    with pytest.raises(ConfigError, match="--lwf-weight: .*give --load"):
        tiny_plan("--train-iters", "2", "--lwf-weight", "1")
    with pytest.raises(ConfigError, match="--lwf-temperature: must be > 0"):
        tiny_plan("--lwf-temperature", "0")
    with pytest.raises(ConfigError, match="--lwf-reduction"):
        tiny_plan("--lwf-reduction", "sum")


@pytest.mark.parametrize("flag", [["--lwf-weight", "1"], ["--ewc-weight", "1e6"]])
@pytest.mark.parametrize(("layout", "message"), [
    (["--pipeline-model-parallel-size", "2"], "is not supported with --pipeline-model-parallel-size 2"),
    (["--zero-stage", "3"], "is not supported at --zero-stage 3"),
])
def test_unsupported_layouts_are_refused_naming_the_flag(flag, layout, message):
    from megatron.config import DistEnv

    world = 2 if "--pipeline-model-parallel-size" in layout else 1
    with pytest.raises(ConfigError, match=f"{flag[0]}: .*{message}"):
        tiny_plan("--train-iters", "2", "--load", "x", *layout, *flag, env=DistEnv(world_size=world))
