"""--log-optimizer-states-to-tensorboard: the norms equal a direct computation over the
optimizer's state, are not zero, and reach the log and TensorBoard."""

from __future__ import annotations

import math

import pytest
import torch

from megatron.config import ConfigError, DistEnv
from megatron.distributed import destroy_distributed, init_distributed
from megatron.logs import setup_logging
from megatron.optimizer import OPTIMIZERS
from megatron.trainer.loop import Trainer
from tests.helpers import tiny_plan

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--train-iters", "--optimizer", "--zero-stage", "--tensorboard-dir",
    "--log-optimizer-states-to-tensorboard")

FLAG = "--log-optimizer-states-to-tensorboard"


def run(*flags: str):
    plan = tiny_plan("--train-iters", "3", FLAG, *flags)
    ctx = init_distributed(plan, DistEnv())
    setup_logging(ctx.is_logging_rank)
    try:
        trainer = Trainer(plan, ctx)
        return trainer.run(), trainer.engine.optimizer
    finally:
        destroy_distributed()


def direct(optimizer, derive) -> dict[str, float]:
    sums: dict[str, float] = {}
    abs_sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    maxes: dict[str, float] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = dict(optimizer.state[p])
            if derive is not None:
                state.update(derive(state, group))
            for key, value in state.items():
                if torch.is_tensor(value) and value.ndim > 0:
                    sums[key] = sums.get(key, 0.0) + float(value.double().square().sum())
                    abs_sums[key] = abs_sums.get(key, 0.0) + float(value.double().abs().sum())
                    counts[key] = counts.get(key, 0) + value.numel()
                    maxes[key] = max(maxes.get(key, 0.0), float(value.abs().max()))
    out = {}
    for key in sums:
        out[f"{key}/l2"] = math.sqrt(sums[key])
        out[f"{key}/max_abs"] = maxes[key]
        out[f"{key}/mean_abs"] = abs_sums[key] / counts[key]
    return out


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "sophia"])
def test_norms_match_the_optimizer_state(optimizer, tmp_path, capsys):
    result, opt = run("--optimizer", optimizer, "--tensorboard-dir", str(tmp_path / "tb"))
    expected = direct(opt, OPTIMIZERS[optimizer].derived_states)
    assert result.optimizer_states == pytest.approx(expected, rel=1e-6)
    assert all(v > 0 for v in result.optimizer_states.values())
    if optimizer == "sophia":  # the fraction of coordinates whose update is not clipped
        assert 0 < result.optimizer_states["unclipped/mean_abs"] < 1
    assert "optimizer states: " in capsys.readouterr().out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    first = sorted(expected)[0]
    values = [e.value for e in events.Scalars(f"optimizer_state/{first}")]
    assert len(values) == 3 and values[-1] == pytest.approx(expected[first], rel=1e-6)


def test_zero3_is_refused():
    with pytest.raises(ConfigError, match=rf"^{FLAG}: not available under --zero-stage 3"):
        tiny_plan("--train-iters", "2", FLAG, "--zero-stage", "3")
