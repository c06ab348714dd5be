"""dshampoo: the preconditioned step against a hand computation, blocking, grafting before the
start step, exact state_dict round trips, a tiny GPT that trains and resumes bit-exact, and the
ZeRO refusal."""

from __future__ import annotations

import copy

import pytest
import torch

from megatron.config import ConfigError, DistEnv, parse_args
from megatron.optimizer.shampoo_options import DShampooOptions, block_slices
from megatron.optimizer.shampoo_torch import DShampoo
from megatron.plan import resolve
from megatron.trainer.loop import train
from tests.helpers import tiny_args, tiny_plan


def _root(mat: torch.Tensor, eps: float) -> torch.Tensor:
    """(M + eps * max_eig I)^(-1/4) by hand, in float64."""
    vals, vecs = torch.linalg.eigh(mat.double())
    eps_abs = eps * vals.max()
    return vecs @ torch.diag((vals.clamp(min=0) + eps_abs) ** -0.25) @ vecs.T


def _one_step(weight: torch.Tensor, grad: torch.Tensor, lr: float = 0.1, **options):
    p = torch.nn.Parameter(weight.clone())
    opt = DShampoo(
        [{"params": [p], "rule": "matrix"}], lr=lr, options=DShampooOptions(**options)
    )
    p.grad = grad.clone()
    opt.step()
    return p.detach(), opt


def test_first_preconditioned_step_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    w, g = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    eps = 1e-6
    new, _ = _one_step(
        w,
        g,
        lr=0.1,
        max_preconditioner_dim=8,
        grafting="none",
        momentum=0.0,
        start_preconditioning_step=1,
        precondition_frequency=1,
        epsilon=eps,
    )
    gd = g.double()
    expected = w.double() - 0.1 * _root(gd @ gd.T, eps) @ gd @ _root(gd.T @ gd, eps)
    torch.testing.assert_close(new.double(), expected, rtol=1e-4, atol=1e-5)


def test_blocking_splits_into_expected_blocks_and_matches_per_block_computation():
    blocks = block_slices((10, 6), 4)
    shapes = [(r.stop - r.start, c.stop - c.start) for r, c in blocks]
    assert shapes == [(4, 4), (4, 2), (4, 4), (4, 2), (2, 4), (2, 2)]
    gen = torch.Generator().manual_seed(1)
    w, g = torch.randn(10, 6, generator=gen), torch.randn(10, 6, generator=gen)
    eps = 1e-6
    new, opt = _one_step(
        w,
        g,
        lr=0.1,
        max_preconditioner_dim=4,
        grafting="none",
        momentum=0.0,
        start_preconditioning_step=1,
        precondition_frequency=1,
        epsilon=eps,
    )
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert {k for k in state if k.startswith("L_") and "inv" not in k} == {
        f"L_{b}" for b in range(6)
    }
    expected = w.double().clone()
    for rows, cols in blocks:
        gb = g[rows, cols].double()
        expected[rows, cols] -= 0.1 * _root(gb @ gb.T, eps) @ gb @ _root(gb.T @ gb, eps)
    torch.testing.assert_close(new.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("grafting", ["adam", "sgd"])
def test_before_start_step_the_update_is_the_grafting_update(grafting):
    gen = torch.Generator().manual_seed(2)
    w, g = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    new, _ = _one_step(w, g, lr=0.01, grafting=grafting, momentum=0.0, start_preconditioning_step=5)
    if grafting == "adam":  # first Adam step without momentum: g / (|g| + eps)
        expected = w - 0.01 * g / (g.abs() + 1e-8)
    else:
        expected = w - 0.01 * g
    torch.testing.assert_close(new, expected)


def test_grafting_rescales_each_block_to_the_grafting_norm():
    gen = torch.Generator().manual_seed(3)
    w, g = torch.randn(10, 6, generator=gen), torch.randn(10, 6, generator=gen)
    new, _ = _one_step(
        w,
        g,
        lr=1.0,
        max_preconditioner_dim=4,
        grafting="sgd",
        momentum=0.0,
        start_preconditioning_step=1,
        precondition_frequency=1,
    )
    for rows, cols in block_slices((10, 6), 4):
        step = (w - new)[rows, cols]
        torch.testing.assert_close(step.norm(), g[rows, cols].norm())


def _model_and_opt(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))
    groups = [
        {"params": [model[0].weight, model[2].weight], "rule": "matrix", "weight_decay": 0.1},
        {"params": [model[0].bias, model[2].bias], "rule": "adamw", "weight_decay": 0.0},
    ]
    options = DShampooOptions(
        max_preconditioner_dim=4, precondition_frequency=2, start_preconditioning_step=2, beta2=0.99
    )
    return model, DShampoo(groups, lr=1e-2, weight_decay=0.1, options=options)


def _steps(model, opt, n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(8, 6, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
    return out


def test_state_dict_round_trip_gives_identical_next_steps(tmp_path):
    model, opt = _model_and_opt()
    _steps(model, opt, 5, seed=10)
    path = tmp_path / "opt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    expected = _steps(model, opt, 5, seed=11)

    saved = torch.load(path, weights_only=True)  # only tensors, ints, floats and strings
    fresh_model, fresh_opt = _model_and_opt(seed=123)
    fresh_model.load_state_dict(saved["model"])
    fresh_opt.load_state_dict(saved["opt"])
    state = fresh_opt.state[fresh_model[0].weight]
    assert state["step"] == 5 and {"L_0", "R_0", "L_inv_0", "R_inv_0", "exp_avg_sq"} <= set(state)
    got = _steps(fresh_model, fresh_opt, 5, seed=11)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)


def test_state_dict_survives_deepcopy_and_keeps_dtypes():
    model, opt = _model_and_opt()
    _steps(model, opt, 3, seed=4)
    sd = copy.deepcopy(opt.state_dict())
    for per_param in sd["state"].values():
        for value in per_param.values():
            assert isinstance(value, int | torch.Tensor)
            if isinstance(value, torch.Tensor):
                assert value.dtype == torch.float32


def test_matrix_group_refuses_flat_shards():
    p = torch.nn.Parameter(torch.zeros(12))
    opt = DShampoo([{"params": [p], "rule": "matrix"}])
    p.grad = torch.ones(12)
    with pytest.raises(RuntimeError, match="whole 2-D matrices"):
        opt.step()


def test_invalid_option_names_its_flag():
    with pytest.raises(ConfigError, match="--dshampoo-beta2"):
        DShampooOptions(beta2=0.0)
    with pytest.raises(ConfigError, match="--dshampoo-precondition-frequency"):
        DShampooOptions(precondition_frequency=0)


SHAMPOO = [
    "--optimizer",
    "dshampoo",
    "--dshampoo-precondition-frequency",
    "2",
    "--dshampoo-start-preconditioning-step",
    "3",
    "--dshampoo-max-preconditioner-dim",
    "16",
]


def _run(*flags: str):
    return train(tiny_plan(*SHAMPOO, *flags), DistEnv())


def test_tiny_gpt_trains_and_resumes_bit_exact(tmp_path):
    save = str(tmp_path / "ckpt")
    flags = ("--train-iters", "10", "--lr", "2e-2", "--micro-batch-size", "4")
    full = _run(*flags)
    assert sum(full.losses[-3:]) / 3 < 0.85 * sum(full.losses[:3]) / 3
    # Roots are refreshed at steps 3, 5, 7, ...: the resumed step 6 must use the saved roots.
    first = _run(*flags, "--save", save, "--exit-interval", "5")
    assert first.iteration == 5
    second = _run(*flags, "--save", save, "--load", save)
    assert first.losses + second.losses == full.losses  # bit for bit


def test_zero_stage_3_is_refused_naming_both_flags_and_the_nearest_layout():
    cfg = parse_args(tiny_args(*SHAMPOO, "--zero-stage", "3", "--train-iters", "1")).config
    with pytest.raises(ConfigError, match=r"--optimizer: dshampoo is not correct under --zero-stage 3 "
                                          r"\(supports up to ZeRO-2\); use --zero-stage 2"):
        resolve(cfg, DistEnv())


@pytest.mark.parametrize("grafting", ["adam", "sgd", "none"])
def test_zero_gradient_gives_a_finite_zero_step(grafting):
    w = torch.randn(6, 4)
    new, _ = _one_step(
        w,
        torch.zeros(6, 4),
        grafting=grafting,
        start_preconditioning_step=1,
        precondition_frequency=1,
    )
    assert torch.equal(new, w)
