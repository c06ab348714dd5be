"""Schedule-free AdamW: the wrapper matches the package, plan refusals, saved weights are x."""

from __future__ import annotations

import dataclasses
import glob
import os

import pytest
import torch
from torch import nn

from megatron.config import ConfigError, DistEnv
from megatron.config.optim import OptimConfig
from megatron.optimizer import get_optimizer_spec
from megatron.optimizer.param_groups import split_param_groups
from megatron.optimizer.registry import OPTIMIZERS
from tests.helpers import tiny_plan

CONSTANT = ("--optimizer", "schedulefree", "--lr-decay-style", "constant")


def _toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def _grads(model: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(16, 4, generator=g)
    model.zero_grad()
    model(x).square().mean().backward()


def test_wrapper_matches_package_step_for_step():
    import schedulefree

    ours_model, ref_model = _toy(), _toy()
    cfg = OptimConfig(optimizer="schedulefree", lr=1e-2, weight_decay=0.1, adam_beta1=0.8)
    options = cfg.options["schedulefree"]
    ours = get_optimizer_spec("schedulefree").build(
        split_param_groups(ours_model.named_parameters(), policy="elementwise", weight_decay=0.1),
        cfg,
        options,
    )
    ref_groups = split_param_groups(ref_model.named_parameters(), policy="elementwise", weight_decay=0.1)
    ref = schedulefree.AdamWScheduleFree(
        [{"params": g.params, "weight_decay": g.weight_decay} for g in ref_groups],
        lr=1e-2, betas=(0.8, 0.999), eps=1e-8, warmup_steps=options.warmup_steps, r=options.r,
        weight_lr_power=options.weight_lr_power,
    )
    spec = get_optimizer_spec("schedulefree")
    spec.train_mode(ours)
    ref.train()
    for step in range(6):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            _grads(model, step)
            opt.step()
        if step in (2, 5):  # the eval switch gives x, the train switch y again, identically
            spec.eval_mode(ours)
            ref.eval()
            for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
                assert torch.equal(a, b)
            spec.train_mode(ours)
            ref.train()
        for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
            assert torch.equal(a, b)


def test_decaying_schedule_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"^--lr-decay-style: cosine decays the LR, but schedulefree is schedule-free; "
        r"use --lr-decay-style constant",
    ):
        tiny_plan("--optimizer", "schedulefree", "--lr-decay-style", "cosine", "--train-iters", "4")
    plan = tiny_plan(*CONSTANT, "--lr-warmup-iters", "2", "--train-iters", "4")
    assert plan.warmup_steps == 2


@pytest.mark.parametrize("zero", ["1", "2", "3"])
def test_zero_is_refused(zero):
    with pytest.raises(ConfigError, match=rf"^--optimizer: schedulefree .*--zero-stage {zero}"):
        tiny_plan(*CONSTANT, "--zero-stage", zero, "--train-iters", "4")


def test_replaced_params_are_refused():
    # What DeepSpeed's fp16/bf16 and ZeRO wrappers do: hand the optimizer copies of the weights.
    model = _toy()
    cfg = OptimConfig(optimizer="schedulefree", lr=1e-2)
    opt = get_optimizer_spec("schedulefree").build(
        split_param_groups(model.named_parameters(), policy="elementwise", weight_decay=0.0),
        cfg,
        cfg.options["schedulefree"],
    )
    opt.param_groups[0]["params"] = [p.detach().clone() for p in opt.param_groups[0]["params"]]
    with pytest.raises(ConfigError, match=r"^--optimizer: schedulefree needs to own the model's parameters"):
        opt.train()


def test_bf16_master_copies_are_refused_before_start():
    # DeepSpeed's bf16 wrapper gives the optimizer fp32 copies; eval() would not reach the model.
    # The plan refuses the pair before anything is built (the runtime guard above stays as a net).
    with pytest.raises(ConfigError, match=r"^--optimizer: schedulefree swaps its averaged weights .* train it in fp32"):
        tiny_plan(*CONSTANT, "--bf16", "--train-iters", "2")


def test_saved_weights_are_the_averaged_x(tmp_path, monkeypatch):
    from megatron.optimizer import schedule_free
    from megatron.trainer import checkpoints, loop

    zs: list[dict[int, torch.Tensor]] = []
    build = schedule_free.build_schedulefree

    def recording_build(*args, **kwargs):
        opt = build(*args, **kwargs)
        step = opt.step

        def recording_step(*a, **k):
            out = step(*a, **k)
            zs.append({id(p): opt.state[p]["z"].clone() for g in opt.param_groups for p in g["params"]})
            return out

        opt.step = recording_step
        return opt

    # OptimizerSpec is frozen: swap the registry entry for one with the recording build.
    recording = dataclasses.replace(OPTIMIZERS["schedulefree"], build=recording_build)
    modules = []
    save_checkpoint = checkpoints.save_checkpoint

    def capturing_save(engine, *args, **kwargs):
        modules.append(engine.module)
        return save_checkpoint(engine, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save_checkpoint", capturing_save)
    save = str(tmp_path / "ckpt")
    with OPTIMIZERS.override("schedulefree", recording):
        loop.train(tiny_plan(*CONSTANT, "--train-iters", "5", "--lr", "1e-2", "--save", save), DistEnv())

    # Constant LR, r=0: every step has the same averaging weight, so x_T = mean(z_1 .. z_T).
    assert len(zs) == 5
    module = modules[-1]
    (path,) = glob.glob(os.path.join(save, "global_step5", "*model_states.pt"))
    saved = torch.load(path, map_location="cpu", weights_only=False)["module"]
    for name, p in module.named_parameters():
        x = torch.stack([z[id(p)] for z in zs]).mean(0)
        assert torch.allclose(saved[name], x, rtol=1e-4, atol=1e-6), name
        if p.ndim == 2:  # after saving, training weights are y again, which differ from x
            assert not torch.allclose(p.detach(), x, rtol=1e-4, atol=1e-6), name
