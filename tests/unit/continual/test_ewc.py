"""EWC (spec oracle 5a/5b): zero at theta*, (lambda/N) F delta against a Fisher recomputed by
plain autograd, identical first steps, a different third, gradient accumulation, bit-exact
anchor across a mid-stage resume, and bad input."""

from __future__ import annotations

import os

import pytest
import torch

from megatron.config import ConfigError, DistEnv
from megatron.trainer.loop import Trainer, train
from megatron.trainer.resume import restore
from tests.helpers import tiny_plan

pytestmark = pytest.mark.deepspeed

EWC = ["--ewc-weight", "1e6", "--ewc-num-iterations", "3"]


def _stage0(tmp_path, *flags: str) -> str:
    save = str(tmp_path / "s0")
    if not os.path.isdir(save):
        train(tiny_plan("--train-iters", "2", "--save", save, *flags), DistEnv())
    return save


def _stage1(tmp_path, *flags: str, name: str = "s1", iters: int = 4):
    s0 = _stage0(tmp_path)
    return train(tiny_plan("--train-iters", str(iters), "--load", s0, "--finetune",
                           "--save", str(tmp_path / name), *flags), DistEnv())


def _independent_fisher(trainer: Trainer, n: int) -> dict[str, torch.Tensor]:
    """sum_b (grad of the mean loss of global batch b)^2 with .backward() on a fresh copy."""
    from megatron.model.gpt import GPTModel, masked_mean

    model = GPTModel(trainer.plan.model)
    model.load_state_dict(trainer.engine.module.state_dict())
    fisher = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    reader = trainer.reader(trainer.streams.train.stream)
    for k in range(n):
        model.zero_grad()
        batches = reader.step_batches(k * trainer.plan.global_batch_size)
        loss = sum(masked_mean(model(b.tokens, b.labels), b.loss_mask) for b in batches) / len(batches)
        loss.backward()
        for name, p in model.named_parameters():
            fisher[name] += p.grad.square()
    return fisher


def test_penalty_gradient_is_lambda_over_n_fisher_delta(tmp_path):
    from megatron.distributed import destroy_distributed, init_distributed

    s0 = _stage0(tmp_path)
    plan = tiny_plan("--train-iters", "4", "--load", s0, "--finetune", "--micro-batch-size", "1",
                     "--global-batch-size", "2", *EWC)
    ctx = init_distributed(plan, DistEnv())
    try:
        trainer = Trainer(plan, ctx)
        restore(trainer, trainer.callbacks)
        anchor = trainer.regularizers.ewc
        module = trainer.engine.module
        name = "layers.0.mlp.fc1.weight" if "layers.0.mlp.fc1.weight" in dict(module.named_parameters()) \
            else next(n for n, p in module.named_parameters() if p.dim() == 2)
        param = dict(module.named_parameters())[name]
        grad = torch.autograd.grad(anchor.penalty(module), param)[0]
        assert torch.count_nonzero(grad) == 0  # theta = theta*: exactly zero
        fisher = _independent_fisher(trainer, 3)
        index = (1, 2)
        assert fisher[name][index] > 0
        delta = 0.25
        with torch.no_grad():
            param[index] += delta
        penalty = anchor.penalty(module)
        grad = torch.autograd.grad(penalty, param)[0]
        expected = 1e6 / 3 * fisher[name][index] * delta
        assert float(grad[index]) == pytest.approx(float(expected), rel=1e-5)
        assert torch.count_nonzero(grad) == 1
        assert float(penalty.detach()) == pytest.approx(float(1e6 / 3 * 0.5 * fisher[name][index] * delta**2), rel=1e-5)
        for shard, f in zip(anchor.shards, anchor.fisher, strict=True):  # the whole F, not just one entry
            torch.testing.assert_close(f, fisher[shard.name].reshape(-1), rtol=1e-5, atol=1e-12)
    finally:
        trainer.reporter.close()
        trainer.stop.close()
        destroy_distributed()


def test_first_steps_equal_plain_finetune_then_ewc_pulls_back(tmp_path):
    plain = _stage1(tmp_path, name="plain").losses
    ewc = _stage1(tmp_path, *EWC, name="ewc").losses
    # Update 1 happens at theta = theta*: zero penalty gradient, so step 2's loss is identical.
    assert ewc[:2] == plain[:2]
    assert abs(ewc[2] - plain[2]) > 1e-4


def test_gradient_accumulation_pattern_does_not_change_ewc(tmp_path):
    whole = _stage1(tmp_path, *EWC, "--micro-batch-size", "4", name="a").losses
    accumulated = _stage1(tmp_path, *EWC, "--micro-batch-size", "2", "--global-batch-size", "4",
                          name="b").losses
    assert accumulated == pytest.approx(whole, rel=1e-5)


def test_mid_stage_resume_restores_the_anchor_bit_exact(tmp_path):
    full = _stage1(tmp_path, *EWC, "--save-interval", "2", name="full").losses
    s1 = str(tmp_path / "s1")
    _stage1(tmp_path, *EWC, "--save-interval", "2", "--exit-interval", "2", name="s1")
    a2 = torch.load(os.path.join(s1, "global_step2", "continual", "tp0_pp0_dp0.pt"))
    # Resume inside the stage: --load is the stage's own --save (no --finetune).
    resumed = train(tiny_plan("--train-iters", "4", "--load", s1, "--save", s1, *EWC), DistEnv())
    a4 = torch.load(os.path.join(s1, "global_step4", "continual", "tp0_pp0_dp0.pt"))
    for x, y in zip(a2["ewc"]["anchor"] + a2["ewc"]["fisher"], a4["ewc"]["anchor"] + a4["ewc"]["fisher"],
                    strict=True):
        assert torch.equal(x, y)
    assert list(resumed.losses) == list(full[2:])


def test_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="--ewc-weight: .*give --load"):
        tiny_plan("--train-iters", "2", *EWC)
    with pytest.raises(ConfigError, match="--ewc-weight: .*--pipeline-model-parallel-size"):
        tiny_plan("--train-iters", "2", "--load", "x", "--pipeline-model-parallel-size", "2", *EWC,
                  env=DistEnv(world_size=2))
    with pytest.raises(ConfigError, match="--lwf-weight: .*--zero-stage 3"):
        tiny_plan("--train-iters", "2", "--load", "x", "--zero-stage", "3", "--lwf-weight", "1")
    with pytest.raises(ConfigError, match="--ewc-weight: must be a finite number"):
        tiny_plan("--ewc-weight", "-1")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="--ewc-weight: --load .* holds no checkpoint"):
        train(tiny_plan("--train-iters", "2", "--load", str(empty), *EWC), DistEnv())
    # A resume inside a stage whose checkpoint has no anchor (saved without EWC) is refused.
    s0 = _stage0(tmp_path)
    with pytest.raises(ConfigError, match="no EWC/LwF anchor"):
        train(tiny_plan("--train-iters", "4", "--load", s0, "--save", s0, *EWC), DistEnv())
    # A universal checkpoint converted from a checkpoint without EWC files: refused the same way.
    from megatron.checkpointing.convert import convert

    assert convert(s0).regularizers == ()
    with pytest.raises(ConfigError, match="--ewc-weight: the universal checkpoint .* carries no EWC anchor"):
        train(tiny_plan("--train-iters", "4", "--load", s0, "--save", s0, "--universal-checkpoint", *EWC),
              DistEnv())
    empty_list = tmp_path / "empty.txt"
    empty_list.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="--ewc-fisher-data: previous"):
        s0_plain = str(tmp_path / "s0_list")
        train(tiny_plan("--train-iters", "2", "--save", s0_plain), DistEnv())
        _fake_previous_list(s0_plain, str(empty_list))
        train(tiny_plan("--train-iters", "2", "--load", s0_plain, "--finetune", *EWC,
                        "--ewc-fisher-data", "previous"), DistEnv())


def _fake_previous_list(save: str, data_list: str) -> None:
    """Make the checkpoint's metadata name ``data_list`` as its training data (no mock data)."""
    import json

    path = os.path.join(save, "global_step2", "run_metadata.json")
    with open(path) as f:
        meta = json.load(f)
    meta["config"]["--data-file-list"] = data_list
    meta["config"]["--mock-data"] = False
    with open(path, "w") as f:
        json.dump(meta, f)
