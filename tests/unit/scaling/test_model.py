"""The muP / CompleteP model: init stds measured on the built model, forward multipliers, and
bit-identical logits to the standard model at the base shape (mup.md section 4.2)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from megatron.model.gpt import GPTModel
from tests.helpers import tiny_plan

SIGMA = 0.02
# fan 256 (m_N = 4 over base 64), 8 layers (m_L = 4 over base 2); vocab 512 for >1e5 samples.
WIDE = ("--train-iters", "1", "--hidden-size", "256", "--num-attention-heads", "4",
        "--num-layers", "8", "--vocab-size", "512", "--mup-base-hidden-size", "64")  # fmt: skip


def _std(model: GPTModel, name: str) -> float:
    return dict(model.named_parameters())[name].detach().std().item()


@pytest.mark.parametrize(
    ("recipe", "out_proj"),
    [(("--scaling-recipe", "mup"), SIGMA / math.sqrt(2 * 8 * 4)),
     (("--scaling-recipe", "completep", "--mup-base-num-layers", "2"), SIGMA / 2)],
)  # fmt: skip
def test_init_stds_within_5_percent(dist_world1, recipe, out_proj):
    model = GPTModel(tiny_plan(*WIDE, *recipe).model)
    assert dict(model.named_parameters())["layers.3.mlp.dense_h_to_4h.weight"].numel() >= 1e5
    for name in ("layers.3.self_attention.query_key_value.weight", "layers.3.mlp.dense_h_to_4h.weight"):
        assert _std(model, name) == pytest.approx(SIGMA / 2, rel=0.05)
    assert _std(model, "layers.3.mlp.dense_4h_to_h.weight") == pytest.approx(out_proj, rel=0.05)
    assert _std(model, "embedding.word_embeddings.weight") == pytest.approx(SIGMA, rel=0.05)


@pytest.mark.parametrize(
    "recipe",
    [
        ("--scaling-recipe", "mup", "--mup-base-hidden-size", "16"),
        ("--scaling-recipe", "completep", "--mup-base-hidden-size", "16", "--mup-base-num-layers", "2",
         "--scaling-block-out-proj-init-depth-power", "0.5"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("untie", [(), ("--untie-embeddings-and-output-weights",)])
def test_base_shape_logits_bit_identical_to_standard(dist_world1, recipe, untie):
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    standard = GPTModel(tiny_plan("--train-iters", "1", *untie).model)
    plan = tiny_plan("--train-iters", "1", *untie, *recipe, "--mup-base-head-dim", "4")
    assert plan.scaling.active and plan.model.attention_scale is None
    scaled = GPTModel(plan.model)
    with torch.no_grad():
        assert torch.equal(standard(tokens), scaled(tokens))


@pytest.mark.parametrize("untie", [(), ("--untie-embeddings-and-output-weights",)])
def test_logit_multiplier_scales_the_head_input_tied_or_untied(dist_world1, untie):
    plan = tiny_plan("--train-iters", "1", *untie, "--scaling-recipe", "mup",
                     "--mup-base-hidden-size", "4", "--mup-output-mult", "2")  # fmt: skip
    assert plan.model.logit_mult == 0.5  # alpha_out / m_N = 2 / 4
    scaled = GPTModel(plan.model)
    plain = GPTModel(dataclasses.replace(plan.model, logit_mult=1.0))
    plain.load_state_dict(scaled.state_dict())
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(scaled(tokens), 0.5 * plain(tokens), rtol=1e-6, atol=1e-7)


def test_residual_and_embedding_multipliers_change_the_function(dist_world1):
    plan = tiny_plan("--train-iters", "1", "--num-layers", "4", "--scaling-recipe", "completep",
                     "--mup-base-hidden-size", "16", "--mup-base-num-layers", "1",
                     "--mup-embedding-mult", "3")  # fmt: skip
    assert plan.model.residual_mult == 0.25 and plan.model.embedding_mult == 3.0
    model = GPTModel(plan.model).eval()
    tokens = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(2))
    layer = model.layers[0]
    x = torch.randn(1, 16, 16)
    with torch.no_grad():
        attn = layer.self_attention(layer.input_layernorm(x))
        mid = x + 0.25 * attn
        expected = mid + 0.25 * layer.mlp(layer.post_attention_layernorm(mid))
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
        emb = model.embedding(tokens)
        torch.testing.assert_close(emb, 3.0 * model.embedding.word_embeddings(tokens), rtol=0, atol=0)


def test_attention_scale_forms():
    mup = ("--train-iters", "1", "--hidden-size", "32", "--num-attention-heads", "4",
           "--scaling-recipe", "mup", "--mup-base-hidden-size", "16")  # fmt: skip
    assert tiny_plan(*mup).model.attention_scale == 1 / 8  # 1/d_head, d_head 8
    assert tiny_plan(*mup, "--mup-base-head-dim", "4").model.attention_scale == 2 / 8  # sqrt(4)/8
    assert tiny_plan(*mup, "--mup-base-head-dim", "8").model.attention_scale is None  # = 1/sqrt(8)
    assert tiny_plan(*mup, "--mup-attn-scale-power", "0.5").model.attention_scale is None


def test_hf_export_refuses_mup_multipliers():
    from megatron.checkpointing.hf_export import check_llama_shaped
    from megatron.config import ConfigError

    llama = ("--train-iters", "1", "--normalization", "rmsnorm", "--swiglu")
    check_llama_shaped(tiny_plan(*llama).model)
    with pytest.raises(ConfigError, match="no muP/CompleteP forward multipliers"):
        check_llama_shaped(tiny_plan(*llama, "--scaling-recipe", "mup", "--mup-base-hidden-size", "8").model)
