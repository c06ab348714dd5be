"""The registered export targets: Llama, Qwen2, Mistral, Qwen3, OLMo-2, GPT-NeoX, Starcoder2 and GPT-2 (see
``hf_arch``).

Each function yields the target's tensors in file order; the ``config.json`` builders write
every value the target reads, with RoPE theta both in the legacy field (transformers 4.x) and
in ``rope_parameters`` (5.x), so either major version loads the export.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from megatron.checkpointing.hf_arch import (
    Getter,
    HFTensor,
    direct_tensor,
    embedding_tensor,
    gpt2_problems,
    head_tensors,
    llama_problems,
    mistral_problems,
    neox_problems,
    norm_tensors,
    qkv_tensors,
    qwen2_problems,
    qwen3_problems,
    olmo2_problems,
    register_exporter,
    shapes_of,
    starcoder2_problems,
)
from megatron.model.spec import GPTSpec


def rope_scaling(spec: GPTSpec) -> dict[str, Any] | None:
    """``rope_scaling`` of ``spec`` (``llama3`` or ``linear``), or None."""
    from megatron.model.rope import LLAMA3_HIGH_FREQ_FACTOR, LLAMA3_LOW_FREQ_FACTOR, LLAMA3_ORIGINAL_CONTEXT

    if spec.rope_scaling_factor != 1.0:
        return {"rope_type": "llama3", "factor": spec.rope_scaling_factor,
                "low_freq_factor": LLAMA3_LOW_FREQ_FACTOR, "high_freq_factor": LLAMA3_HIGH_FREQ_FACTOR,
                "original_max_position_embeddings": LLAMA3_ORIGINAL_CONTEXT}
    if spec.rotary_interpolation != 1.0:
        return {"rope_type": "linear", "factor": spec.rotary_interpolation}
    return None


def _rope(spec: GPTSpec, **extra: Any) -> dict[str, Any]:
    theta = float(spec.rotary_base)
    scaling = rope_scaling(spec)
    if scaling is None:
        return {"rope_theta": theta, "rope_parameters": {"rope_type": "default", "rope_theta": theta, **extra}}
    # transformers 4.x reads rope_scaling; 5.x prefers it over rope_parameters when both are there.
    return {"rope_theta": theta, "rope_scaling": dict(scaling),
            "rope_parameters": {**scaling, "rope_theta": theta, **extra}}


def _common_config(spec: GPTSpec, hf_class: str, model_type: str) -> dict[str, Any]:
    return {
        "architectures": [hf_class],
        "model_type": model_type,
        "vocab_size": spec.original_vocab_size,
        "initializer_range": spec.init_method_std,
        "tie_word_embeddings": spec.tie_embeddings,
    }


# ---- Llama -------------------------------------------------------------------------------------


def llama_config(spec: GPTSpec) -> dict[str, Any]:
    """``config.json`` of ``LlamaForCausalLM``."""
    return {
        **_common_config(spec, "LlamaForCausalLM", "llama"),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.ffn_hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.norm_epsilon,
        **_rope(spec),
        "attention_bias": spec.bias,
        "mlp_bias": spec.bias,
    }


@register_exporter("llama", "LlamaForCausalLM", problems=llama_problems, config=llama_config)
def llama_tensors(get: Getter, spec: GPTSpec) -> Iterator[HFTensor]:
    """Llama: separate q/k/v projections, SwiGLU fc1 ``[gate; up]`` split in two."""
    shapes = shapes_of(spec)
    yield embedding_tensor(get, spec, "model.embed_tokens.weight")
    f, d = spec.ffn_hidden_size, spec.hidden_size
    for i in range(spec.num_layers):
        ours, hf = f"layers.{i}", f"model.layers.{i}"
        yield from norm_tensors(get, spec, f"{ours}.input_layernorm", f"{hf}.input_layernorm")
        yield from norm_tensors(get, spec, f"{ours}.post_attention_layernorm", f"{hf}.post_attention_layernorm")
        for kind in ("weight", "bias"):
            if f"{ours}.self_attention.query_key_value.{kind}" in shapes:  # Qwen2: q/k/v biases only
                yield from qkv_tensors(get, f"{ours}.self_attention.query_key_value.{kind}", spec,
                                      f"{hf}.self_attn", kind)
            if kind == "bias" and not spec.bias:
                continue
            yield direct_tensor(get, f"{ours}.self_attention.dense.{kind}", f"{hf}.self_attn.o_proj.{kind}", shapes)
            fc1 = f"{ours}.mlp.dense_h_to_4h.{kind}"
            shape = (f, d) if kind == "weight" else (f,)
            for half, part in enumerate(("gate", "up")):
                yield HFTensor(f"{hf}.mlp.{part}_proj.{kind}", shape,
                               lambda fc1=fc1, half=half: get(fc1).chunk(2, dim=0)[half])
            yield direct_tensor(get, f"{ours}.mlp.dense_4h_to_h.{kind}", f"{hf}.mlp.down_proj.{kind}", shapes)
    yield from norm_tensors(get, spec, "final_norm.final_layernorm", "model.norm")
    yield from head_tensors(get, spec, "lm_head.weight")


def mistral_config(spec: GPTSpec) -> dict[str, Any]:
    """``config.json`` of ``MistralForCausalLM`` (no sliding window)."""
    config = {k: v for k, v in llama_config(spec).items() if k not in ("attention_bias", "mlp_bias")}
    return {**config, "architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": None}


def qwen2_config(spec: GPTSpec) -> dict[str, Any]:
    """``config.json`` of ``Qwen2ForCausalLM`` (q/k/v biases, no sliding window)."""
    config = {k: v for k, v in llama_config(spec).items() if k not in ("attention_bias", "mlp_bias")}
    return {**config, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "use_sliding_window": False, "sliding_window": None, "max_window_layers": spec.num_layers}


# Same tensor names as Llama; only selected by name (an import from that class) or, for Qwen2,
# by its q/k/v-only biases.
register_exporter("qwen2", "Qwen2ForCausalLM", problems=qwen2_problems, config=qwen2_config)(llama_tensors)
register_exporter("mistral", "MistralForCausalLM", problems=mistral_problems, config=mistral_config)(llama_tensors)


def qwen3_config(spec: GPTSpec) -> dict[str, Any]:
    """``config.json`` of ``Qwen3ForCausalLM`` (q/k norms, explicit head_dim, no sliding window)."""
    config = {k: v for k, v in llama_config(spec).items() if k not in ("mlp_bias",)}
    return {**config, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "use_sliding_window": False, "sliding_window": None, "max_window_layers": spec.num_layers}


@register_exporter("qwen3", "Qwen3ForCausalLM", problems=qwen3_problems, config=qwen3_config)
def qwen3_tensors(get: Getter, spec: GPTSpec) -> Iterator[HFTensor]:
    """Llama's tensors plus each layer's ``q_norm``/``k_norm`` (``head_dim`` wide)."""
    yield from llama_tensors(get, spec)
    for i in range(spec.num_layers):
        for ours, hf in (("q_layernorm", "q_norm"), ("k_layernorm", "k_norm")):
            name = f"layers.{i}.self_attention.{ours}.weight"
            yield HFTensor(f"model.layers.{i}.self_attn.{hf}.weight", shapes_of(spec)[name], lambda n=name: get(n))


def olmo2_config(spec: GPTSpec) -> dict[str, Any]:
    """``config.json`` of ``Olmo2ForCausalLM``."""
    config = {k: v for k, v in llama_config(spec).items() if k not in ("mlp_bias", "head_dim")}
    return {**config, "architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2"}


OLMO2_NORMS = {".input_layernorm.": ".post_attention_layernorm.",
               ".post_attention_layernorm.": ".post_feedforward_layernorm."}


@register_exporter("olmo2", "Olmo2ForCausalLM", problems=olmo2_problems, config=olmo2_config)
def olmo2_tensors(get: Getter, spec: GPTSpec) -> Iterator[HFTensor]:
    """Qwen3's tensors with OLMo-2's names for the block norms (ours take the branch outputs)."""
    for t in qwen3_tensors(get, spec):
        for ours, theirs in OLMO2_NORMS.items():
            if ours in t.name and t.name.startswith("model.layers."):
                t = HFTensor(t.name.replace(ours, theirs), t.shape, t.load)
                break
        yield t


# ---- GPT-NeoX ----------------------------------------------------------------------------------


def neox_config(spec: GPTSpec) -> dict[str, Any]:
    """``config.json`` of ``GPTNeoXForCausalLM``."""
    return {
        **_common_config(spec, "GPTNeoXForCausalLM", "gpt_neox"),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.ffn_hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_attention_heads,
        "hidden_act": "gelu_new" if spec.openai_gelu else "gelu",
        "max_position_embeddings": spec.max_position_embeddings,
        "layer_norm_eps": spec.norm_epsilon,
        "use_parallel_residual": spec.parallel_residual,
        "rotary_pct": spec.rotary_percent,
        "rotary_emb_base": float(spec.rotary_base),
        **_rope(spec, partial_rotary_factor=spec.rotary_percent),
        "attention_bias": True,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
    }


@register_exporter("gpt_neox", "GPTNeoXForCausalLM", problems=neox_problems, config=neox_config)
def neox_tensors(get: Getter, spec: GPTSpec) -> Iterator[HFTensor]:
    """GPT-NeoX: our MHA fused QKV is already its per-head ``[q_h, k_h, v_h]`` layout."""
    shapes = shapes_of(spec)
    yield embedding_tensor(get, spec, "gpt_neox.embed_in.weight")
    for i in range(spec.num_layers):
        ours, hf = f"layers.{i}", f"gpt_neox.layers.{i}"
        yield from norm_tensors(get, spec, f"{ours}.input_layernorm", f"{hf}.input_layernorm")
        yield from norm_tensors(get, spec, f"{ours}.post_attention_layernorm", f"{hf}.post_attention_layernorm")
        for kind in ("weight", "bias"):
            for a, b in (("self_attention.query_key_value", "attention.query_key_value"),
                         ("self_attention.dense", "attention.dense"),
                         ("mlp.dense_h_to_4h", "mlp.dense_h_to_4h"),
                         ("mlp.dense_4h_to_h", "mlp.dense_4h_to_h")):
                yield direct_tensor(get, f"{ours}.{a}.{kind}", f"{hf}.{b}.{kind}", shapes)
    yield from norm_tensors(get, spec, "final_norm.final_layernorm", "gpt_neox.final_layer_norm")
    # ``embed_out`` is the name both transformers 4.x and 5.x (which renames it) load.
    yield from head_tensors(get, spec, "embed_out.weight")


# ---- Starcoder2 --------------------------------------------------------------------------------


def starcoder2_config(spec: GPTSpec) -> dict[str, Any]:
    """``config.json`` of ``Starcoder2ForCausalLM`` (exact GeLU, no sliding window)."""
    return {
        **_common_config(spec, "Starcoder2ForCausalLM", "starcoder2"),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.ffn_hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "hidden_act": "gelu",
        "max_position_embeddings": spec.max_position_embeddings,
        "norm_epsilon": spec.norm_epsilon,
        **_rope(spec),
        "use_bias": spec.bias,
        "sliding_window": None,
        "attention_dropout": 0.0,
        "residual_dropout": 0.0,
        "embedding_dropout": 0.0,
    }


@register_exporter("starcoder2", "Starcoder2ForCausalLM", problems=starcoder2_problems,
                   config=starcoder2_config)
def starcoder2_tensors(get: Getter, spec: GPTSpec) -> Iterator[HFTensor]:
    """Starcoder2: Llama's attention names with LayerNorm and a plain ``c_fc``/``c_proj`` MLP."""
    shapes = shapes_of(spec)
    yield embedding_tensor(get, spec, "model.embed_tokens.weight")
    kinds = ("weight", "bias") if spec.bias else ("weight",)
    for i in range(spec.num_layers):
        ours, hf = f"layers.{i}", f"model.layers.{i}"
        yield from norm_tensors(get, spec, f"{ours}.input_layernorm", f"{hf}.input_layernorm")
        yield from norm_tensors(get, spec, f"{ours}.post_attention_layernorm", f"{hf}.post_attention_layernorm")
        for kind in kinds:
            yield from qkv_tensors(get, f"{ours}.self_attention.query_key_value.{kind}", spec,
                                  f"{hf}.self_attn", kind)
            yield direct_tensor(get, f"{ours}.self_attention.dense.{kind}", f"{hf}.self_attn.o_proj.{kind}", shapes)
            yield direct_tensor(get, f"{ours}.mlp.dense_h_to_4h.{kind}", f"{hf}.mlp.c_fc.{kind}", shapes)
            yield direct_tensor(get, f"{ours}.mlp.dense_4h_to_h.{kind}", f"{hf}.mlp.c_proj.{kind}", shapes)
    yield from norm_tensors(get, spec, "final_norm.final_layernorm", "model.norm")
    yield from head_tensors(get, spec, "lm_head.weight")


# ---- GPT-2 -------------------------------------------------------------------------------------


def gpt2_config(spec: GPTSpec) -> dict[str, Any]:
    """``config.json`` of ``GPT2LMHeadModel`` (exact GeLU, 1/sqrt(head_dim) attention scale)."""
    return {
        **_common_config(spec, "GPT2LMHeadModel", "gpt2"),
        "n_embd": spec.hidden_size,
        "n_layer": spec.num_layers,
        "n_head": spec.num_attention_heads,
        "n_inner": spec.ffn_hidden_size,
        "n_positions": spec.max_position_embeddings,
        "activation_function": "gelu_new" if spec.openai_gelu else "gelu",
        "layer_norm_epsilon": spec.norm_epsilon,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
    }


def _gpt2_qkv(get: Getter, ours: str, spec: GPTSpec) -> torch.Tensor:
    """GPT-2's ``c_attn``: ``[q; k; v]`` (heads in order within each), as ``[in, out]`` for weights."""
    from megatron.checkpointing.hf_arch import split_qkv

    fused = torch.cat(split_qkv(get(ours), spec))
    return fused.t() if fused.dim() == 2 else fused


@register_exporter("gpt2", "GPT2LMHeadModel", problems=gpt2_problems, config=gpt2_config)
def gpt2_tensors(get: Getter, spec: GPTSpec) -> Iterator[HFTensor]:
    """GPT-2: learned positions ``wpe``; Conv1D weights stored transposed (``[in, out]``)."""
    shapes = shapes_of(spec)
    d = spec.hidden_size
    yield embedding_tensor(get, spec, "transformer.wte.weight")
    yield direct_tensor(get, "embedding.position_embeddings.weight", "transformer.wpe.weight", shapes)
    for i in range(spec.num_layers):
        ours, hf = f"layers.{i}", f"transformer.h.{i}"
        yield from norm_tensors(get, spec, f"{ours}.input_layernorm", f"{hf}.ln_1")
        qkv = f"{ours}.self_attention.query_key_value"
        yield HFTensor(f"{hf}.attn.c_attn.weight", (d, 3 * d), lambda n=f"{qkv}.weight": _gpt2_qkv(get, n, spec))
        yield HFTensor(f"{hf}.attn.c_attn.bias", (3 * d,), lambda n=f"{qkv}.bias": _gpt2_qkv(get, n, spec))
        yield direct_tensor(get, f"{ours}.self_attention.dense.weight", f"{hf}.attn.c_proj.weight", shapes, True)
        yield direct_tensor(get, f"{ours}.self_attention.dense.bias", f"{hf}.attn.c_proj.bias", shapes)
        yield from norm_tensors(get, spec, f"{ours}.post_attention_layernorm", f"{hf}.ln_2")
        yield direct_tensor(get, f"{ours}.mlp.dense_h_to_4h.weight", f"{hf}.mlp.c_fc.weight", shapes, True)
        yield direct_tensor(get, f"{ours}.mlp.dense_h_to_4h.bias", f"{hf}.mlp.c_fc.bias", shapes)
        yield direct_tensor(get, f"{ours}.mlp.dense_4h_to_h.weight", f"{hf}.mlp.c_proj.weight", shapes, True)
        yield direct_tensor(get, f"{ours}.mlp.dense_4h_to_h.bias", f"{hf}.mlp.c_proj.bias", shapes)
    yield from norm_tensors(get, spec, "final_norm.final_layernorm", "transformer.ln_f")
    yield from head_tensors(get, spec, "lm_head.weight")
