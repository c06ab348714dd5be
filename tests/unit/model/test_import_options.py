"""The model options imported checkpoints need: their checks, the Llama 3.1 frequency rule and
partial rotary against their formulas, and inheritance from a checkpoint's config."""

from __future__ import annotations

import math

import pytest
import torch

from megatron.config import ConfigError
from megatron.model.rope import apply_rope, llama3_frequencies, rope_tables
from tests.helpers import tiny_plan


@pytest.mark.parametrize("flags, message", [
    (["--rope-scaling-factor", "32"], "--rope-scaling-factor: only used with --use-rope-scaling"),
    (["--openai-gelu", "--swiglu"], "--openai-gelu: has no effect with --swiglu"),
    (["--rotary-percent", "0.5", "--no-use-rotary-position-embeddings"], "--rotary-percent: only applies"),
    (["--rotary-percent", "0.3"], "--rotary-percent: 0.3 of head dim 4 is not a positive even width"),
    (["--rotary-seq-len-interpolation-factor", "0"], "--rotary-seq-len-interpolation-factor"),
])
def test_bad_option_combinations_are_refused(flags, message):
    with pytest.raises(ConfigError, match=message):
        tiny_plan(*flags)


def test_options_reach_the_model_spec():
    spec = tiny_plan("--train-iters", "1", "--hidden-size", "32", "--rotary-percent", "0.5", "--add-qkv-bias", "--disable-bias-linear",
                     "--use-rope-scaling", "--rope-scaling-factor", "32", "--use-parallel-residual",
                     "--openai-gelu").model
    assert (spec.rotary_dim, spec.qkv_bias, spec.bias, spec.rope_scaling_factor) == (4, True, False, 32.0)
    assert spec.parallel_residual and spec.openai_gelu and spec.rotary_interpolation == 1.0
    from megatron.checkpointing.layout import full_shapes

    shapes = full_shapes(spec)
    assert shapes["layers.0.self_attention.query_key_value.bias"] == (96,)
    assert "layers.0.self_attention.dense.bias" not in shapes
    assert spec.num_parameters() == sum(math.prod(s) for s in shapes.values())


def test_llama3_rule_matches_its_three_regimes():
    inv = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    scaled = llama3_frequencies(inv, 8.0)
    wavelen = 2 * math.pi / inv
    for f, s, w in zip(inv.tolist(), scaled.tolist(), wavelen.tolist(), strict=True):
        if w < 2048:
            assert s == f
        elif w > 8192:
            assert s == pytest.approx(f / 8)
        else:
            smooth = (8192 / w - 1) / 3
            assert s == pytest.approx((1 - smooth) * f / 8 + smooth * f)
    assert (wavelen < 2048).any() and (wavelen > 8192).any() and ((wavelen > 2048) & (wavelen < 8192)).any()


def test_partial_rotary_leaves_the_other_dimensions_alone():
    x = torch.randn(1, 5, 2, 16)
    cos, sin = rope_tables(8, 4, 10000.0, x.device, x.dtype)
    y = apply_rope(x, cos[:5], sin[:5])
    assert torch.equal(y[..., 4:], x[..., 4:])
    assert torch.equal(y[..., :4], apply_rope(x[..., :4].contiguous(), cos[:5], sin[:5]))
    cos2, _ = rope_tables(8, 4, 10000.0, x.device, x.dtype, interpolation=2.0)
    assert torch.allclose(cos2[2], cos[1])  # linear scaling: position 2 acts as 1


@pytest.mark.parametrize("norm, scope", [("rmsnorm", "head"), ("layernorm", "head"), ("rmsnorm", "projection")])
def test_qk_layernorm_normalizes_each_head_before_rope(dist_world1, norm, scope):
    from megatron.checkpointing.layout import full_shapes
    from megatron.model.gpt import GPTModel
    spec = tiny_plan("--train-iters", "1", "--qk-layernorm", "--normalization", norm,
                     "--num-key-value-heads", "2", "--qk-layernorm-scope", scope).model
    shapes = full_shapes(spec)
    width = spec.head_dim * (2 if scope == "projection" else 1)  # 2 key/value heads
    assert shapes["layers.1.self_attention.k_layernorm.weight"] == (width,)
    assert spec.num_parameters() == sum(math.prod(s) for s in shapes.values())
    model = GPTModel(spec)
    attn = model.layers[0].self_attention
    with torch.no_grad():
        attn.q_layernorm.weight.uniform_(0.5, 2.0)
        attn.k_layernorm.weight.uniform_(0.5, 2.0)
    seen = {}

    def record(q, k, v):
        seen["q"], seen["k"] = q, k
        return torch.zeros_like(q)

    attn.core = record
    x = torch.randn(2, 8, spec.hidden_size)
    attn(x)
    qkv = attn.query_key_value(x)[0].reshape(2, 8, attn.kv_heads, attn.group + 2, spec.head_dim)
    q = qkv[:, :, :, : attn.group].reshape(2, 8, attn.heads, spec.head_dim)
    k = qkv[:, :, :, attn.group]

    def normed(t, layer):
        if scope == "projection":  # OLMo-2: one statistic over all heads of a position
            rms = t.pow(2).mean(dim=(-2, -1), keepdim=True)
            return t * torch.rsqrt(rms + spec.norm_epsilon) * layer.weight.view(t.shape[-2:])
        if norm == "rmsnorm":
            return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + spec.norm_epsilon) * layer.weight
        mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True, unbiased=False)
        return (t - mean) * torch.rsqrt(var + spec.norm_epsilon) * layer.weight + layer.bias

    cos, sin = rope_tables(spec.max_position_embeddings, spec.rotary_dim, spec.rotary_base, x.device, x.dtype)
    want_q = apply_rope(normed(q, attn.q_layernorm), cos[:8], sin[:8]).transpose(1, 2)
    want_k = apply_rope(normed(k, attn.k_layernorm), cos[:8], sin[:8]).transpose(1, 2)
    torch.testing.assert_close(seen["q"], want_q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["k"], want_k, rtol=1e-5, atol=1e-6)


def test_output_norm_placement_normalizes_the_branch_outputs(dist_world1):
    from megatron.model.gpt import GPTModel

    spec = tiny_plan("--train-iters", "1", "--norm-placement", "output", "--normalization", "rmsnorm").model
    layer = GPTModel(spec).layers[0].eval()
    x = torch.randn(2, 8, spec.hidden_size)
    h = x + layer.input_layernorm(layer.self_attention(x))
    want = h + layer.post_attention_layernorm(layer.mlp(h))
    torch.testing.assert_close(layer(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("flags, message", [
    (["--qk-layernorm-scope", "projection"], "--qk-layernorm-scope: projection needs --qk-layernorm"),
    (["--qk-layernorm", "--qk-layernorm-scope", "projection"], "--qk-layernorm-scope: projection is an RMSNorm"),
    (["--norm-placement", "output", "--use-parallel-residual"], "--norm-placement: output has no meaning"),
])
def test_bad_qk_and_placement_combinations_are_refused(flags, message):
    with pytest.raises(ConfigError, match=message):
        tiny_plan(*flags)
