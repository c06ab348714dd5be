"""Recompute choices: every granularity/method gives the no-recompute losses and gradients, and
recomputes exactly the layers (or attention cores) it names, counted as forward calls."""

from __future__ import annotations

import pytest
import torch

from megatron.config import ConfigError
from megatron.model.gpt import GPTModel, masked_mean
from megatron.model.layers import SelfAttention, TransformerLayer
from tests.helpers import tiny_plan

pytestmark = pytest.mark.compat("--recompute-granularity", "--recompute-method", "--recompute-num-layers",
                              "--checkpoint-num-layers")

DROPOUT = ["--hidden-dropout", "0.1", "--attention-dropout", "0.1", "--num-layers", "4"]


def _step(flags: list[str]) -> tuple[float, list[torch.Tensor], dict[str, int]]:
    """One forward/backward of the 4-layer tiny GPT with dropout: loss, gradients and the number
    of transformer-layer and attention-core forward calls."""
    calls = {"layer": 0, "core": 0}
    layer_forward, core = TransformerLayer._forward, SelfAttention.core

    def counted_layer(self, x):  # noqa: ANN001, ANN202
        calls["layer"] += 1
        return layer_forward(self, x)

    def counted_core(self, q, k, v):  # noqa: ANN001, ANN202
        calls["core"] += 1
        return core(self, q, k, v)

    model = GPTModel(tiny_plan("--train-iters", "1", *DROPOUT, *flags).model)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)  # the same dropout draws in every run
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TransformerLayer, "_forward", counted_layer)
        mp.setattr(SelfAttention, "core", counted_core)
        loss = masked_mean(model(tokens, tokens), torch.ones(2, 16))
        loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in model.parameters()], calls


@pytest.mark.parametrize(
    ("flags", "layers", "cores"),
    [
        (["--recompute-activations"], 8, 8),
        (["--recompute-granularity", "full"], 8, 8),
        (["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "2"], 8, 8),
        (["--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", "1"], 5, 5),
        (["--recompute-granularity", "full", "--recompute-method", "block", "--checkpoint-num-layers", "3"], 7, 7),
        (["--recompute-granularity", "selective"], 4, 8),
    ],
    ids=["activations", "full", "uniform-2", "block-1", "block-3-alias", "selective"],
)
def test_recompute_same_gradients_and_counted_recomputes(dist_world1, flags, layers, cores):
    loss, grads, calls = _step([])
    assert calls == {"layer": 4, "core": 4}
    got_loss, got_grads, got_calls = _step(flags)
    assert got_calls == {"layer": layers, "core": cores}
    assert got_loss == loss
    for g0, g1 in zip(grads, got_grads, strict=True):
        torch.testing.assert_close(g1, g0, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--recompute-activations", "--recompute-granularity", "selective"],
         "--recompute-granularity: selective disagrees with --recompute-activations"),
        (["--recompute-num-layers", "2"], "--recompute-num-layers: needs --recompute-granularity full"),
        (["--recompute-granularity", "selective", "--recompute-method", "block"],
         "--recompute-method: needs --recompute-granularity full"),
        (["--recompute-granularity", "full", "--recompute-num-layers", "3"],
         "--recompute-num-layers: 3 is more than --num-layers 2"),
    ],
)
def test_bad_recompute_flags_are_refused(flags, message):
    with pytest.raises(ConfigError, match=message):
        tiny_plan(*flags)
