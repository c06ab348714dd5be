"""pytorch-optimizer family (lamb, lion, adopt, soap), schedulefree and sophia on the tiny GPT:
loss falls, resume is bit-exact, per-matrix optimizers refuse ZeRO, options become flags."""

from __future__ import annotations

import pytest
import torch

from megatron.config import ConfigError, DistEnv, parse_args
from megatron.optimizer import OPTIMIZERS
from megatron.trainer.loop import train
from tests.helpers import tiny_args, tiny_plan

# Per-optimizer flags: an LR that trains the tiny GPT in 20 steps, and the schedule each needs.
FLAGS = {
    "lamb": ["--lr", "5e-2"],  # trust-ratio steps scale with ||w||, small at init std 0.02
    "lion": ["--lr", "3e-3"],
    "adopt": ["--lr", "1e-2"],
    "soap": ["--lr", "1e-2", "--soap-precondition-frequency", "2"],
    "schedulefree": ["--lr", "1e-2", "--lr-decay-style", "constant"],
    "sophia": ["--lr", "1e-2", "--sophia-hessian-interval", "3"],
}


def run(name: str, *flags: str):
    return train(tiny_plan("--optimizer", name, *FLAGS[name], *flags), DistEnv())


def test_registered():
    assert set(FLAGS) <= set(OPTIMIZERS)
    assert {n: OPTIMIZERS[n].max_zero_stage for n in FLAGS} == {
        "lamb": 0, "lion": 3, "adopt": 3, "soap": 0, "schedulefree": 0, "sophia": 2,
    }
    assert all(OPTIMIZERS[n].param_policy == "elementwise" for n in FLAGS)


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_loss_goes_down(name):
    losses = run(name, "--train-iters", "20").losses
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.4


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_resume_is_bit_exact(name, tmp_path):
    # The uninterrupted run saves at the same step: schedule-free's save swaps y -> x -> y, which
    # rounds, so only a run that saved there too is bit-identical (the other optimizers do not care).
    full = run(name, "--train-iters", "4", "--save", str(tmp_path / "full"), "--save-interval", "2")
    save = str(tmp_path / "ckpt")
    first = run(name, "--train-iters", "4", "--save", save, "--exit-interval", "2")
    assert first.iteration == 2
    second = run(name, "--train-iters", "4", "--save", save, "--load", save)
    assert first.losses + second.losses == full.losses  # bit for bit


@pytest.mark.parametrize("name", ["lamb", "soap"])
@pytest.mark.parametrize("zero", ["1", "2", "3"])
def test_per_matrix_optimizers_refuse_zero(name, zero):
    with pytest.raises(
        ConfigError,
        match=rf"^--optimizer: {name} is not correct under --zero-stage {zero} "
        r"\(supports up to ZeRO-0\); use --zero-stage 0",
    ):
        tiny_plan("--optimizer", name, "--zero-stage", zero, "--train-iters", "2")


@pytest.mark.parametrize("name", ["lion", "adopt"])
def test_elementwise_optimizers_accept_zero(name):
    assert tiny_plan("--optimizer", name, "--zero-stage", "3", "--train-iters", "2").dp == 1


def test_namespaced_flags():
    cfg = parse_args(tiny_args(
        "--optimizer", "soap", "--soap-precondition-frequency", "5", "--soap-max-precond-dim", "64",
        "--lion-beta1", "0.95", "--lion-beta2", "0.98", "--lamb-rectify", "--adopt-beta2", "0.999",
        "--schedulefree-warmup-steps", "7", "--train-iters", "2",
    )).config
    options = cfg.optim.options
    assert (options["soap"].precondition_frequency, options["soap"].max_precond_dim) == (5, 64)
    assert (options["lion"].beta1, options["lion"].beta2) == (0.95, 0.98)
    assert options["lamb"].rectify is True
    assert options["adopt"].beta2 == 0.999
    assert options["schedulefree"].warmup_steps == 7


@pytest.mark.parametrize("name", ["lamb", "soap"])
def test_per_matrix_optimizers_refuse_flat_partitions(name):
    # What DeepSpeed's ZeRO and bf16-pipeline wrappers do: one flat fp32 tensor per group.
    from megatron.config.optim import OptimConfig
    from megatron.optimizer.param_groups import split_param_groups

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    cfg = OptimConfig(optimizer=name)
    groups = split_param_groups(model.named_parameters(), policy="elementwise", weight_decay=0.1)
    opt = OPTIMIZERS[name].build(groups, cfg, cfg.options[name])
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # the tensors themselves: fine
    for group in opt.param_groups:
        flat = torch.cat([p.detach().reshape(-1) for p in group["params"]])
        flat.grad = torch.ones_like(flat)
        group["params"] = [flat]
    with pytest.raises(ConfigError, match=rf"^--optimizer: {name} updates whole tensors"):
        opt.step()
