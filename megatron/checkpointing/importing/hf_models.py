"""The registered Hugging Face families: Llama, Mistral, Qwen2, Qwen3, OLMo-2, GPT-NeoX (Pythia) and GPT-2.

See ``hf_families`` for the schema handling and the tensor layouts; ``docs/import.md`` for the
table of supported options. A tensor name ``"a|b"`` means "a, or b when the file has no a".
"""

from __future__ import annotations

import logging
from typing import Any

from megatron.checkpointing.importing.hf_families import (
    Config,
    HFFamily,
    Recipe,
    cat0,
    fuse_qkv,
    head_recipe,
    norm_recipes,
    register_family,
    rope_flags,
    split_fused_qkv,
    take,
    transposed,
)

log = logging.getLogger(__name__)

TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")


def _refuse_moe(cfg: Config) -> None:
    for key in ("num_local_experts", "num_experts", "moe_intermediate_size"):
        if cfg.get(key):
            raise cfg.refuse(key, cfg.get(key), "(mixture of experts) has no mapping: our MLP is dense")


def _window(cfg: Config, positions: int, used: bool) -> int:
    """Positions a run may use: a sliding window shorter than the context caps them.

    We implement full attention only, which is the windowed model's function for sequences no
    longer than the window: the import's positions stop there, and ``--seq-length`` is limited
    to the window with a reason naming the config key (checked when a run loads the import).
    """
    window = cfg.get("sliding_window")
    if not used or window is None or window >= positions:
        return positions
    log.warning("%s: sliding_window=%d < max_position_embeddings=%d: the import allows sequences of "
                "at most %d tokens (within the window, full attention is the same function)",
                cfg.path, window, positions, window)
    cfg.limits["--seq-length"] = {
        "max": int(window),
        "why": f"sliding_window={window} in {cfg.path}: we implement full attention, which equals that "
               f"model's windowed attention only for sequences of at most {window} tokens",
    }
    return int(window)


# ---- Llama, Mistral, Qwen2 ---------------------------------------------------------------------


def llama_like_flags(cfg: Config, *, bias: bool, qkv_bias: bool, window: bool) -> dict[str, Any]:
    """Flags of a Llama-shaped model (RMSNorm, SwiGLU, RoPE)."""
    _refuse_moe(cfg)
    cfg.expect("hidden_act", ("silu",), "silu", "is not SiLU: our gated MLP is SwiGLU")
    d, heads = cfg.need("hidden_size"), cfg.need("num_attention_heads")
    flags = rope_flags(cfg)
    if flags["--rotary-percent"] != 1.0:
        raise cfg.refuse("partial_rotary_factor", flags["--rotary-percent"], "is not supported for this class")
    positions = cfg.need("max_position_embeddings")
    return {
        "--num-layers": cfg.need("num_hidden_layers"),
        "--hidden-size": d,
        "--ffn-hidden-size": cfg.need("intermediate_size"),
        "--num-attention-heads": heads,
        "--num-key-value-heads": cfg.get("num_key_value_heads", heads),
        "--kv-channels": cfg.get("head_dim", d // heads),
        "--max-position-embeddings": _window(cfg, positions, window),
        **flags,
        "--normalization": "rmsnorm",
        "--norm-epsilon": float(cfg.get("rms_norm_eps", 1e-6)),
        "--swiglu": True,
        "--disable-bias-linear": not bias,
        "--add-qkv-bias": qkv_bias and not bias,
        "--untie-embeddings-and-output-weights": not cfg.get("tie_word_embeddings", False),
    }


def llama_flags(cfg: Config) -> dict[str, Any]:
    """Llama: ``attention_bias`` and ``mlp_bias`` together (both on or both off)."""
    attention, mlp = bool(cfg.get("attention_bias", False)), bool(cfg.get("mlp_bias", False))
    if attention != mlp:
        raise cfg.refuse("attention_bias", attention, f"with mlp_bias={mlp} has no mapping: our linear "
                         "biases are all on or all off")
    return llama_like_flags(cfg, bias=attention, qkv_bias=False, window=False)


def mistral_flags(cfg: Config) -> dict[str, Any]:
    """Mistral: Llama without biases, with an optional sliding window."""
    return llama_like_flags(cfg, bias=False, qkv_bias=False, window=True)


def qwen2_flags(cfg: Config) -> dict[str, Any]:
    """Qwen2: biases on q/k/v only; a sliding window only with ``use_sliding_window``."""
    return llama_like_flags(cfg, bias=False, qkv_bias=True, window=bool(cfg.get("use_sliding_window", False)))


def llama_tensors(flags: dict[str, Any]) -> list[Recipe]:
    """Recipes of a Llama-shaped model."""
    kv = flags["--num-key-value-heads"]
    bias = not flags["--disable-bias-linear"]
    recipes = [Recipe("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), take)]
    for i in range(flags["--num-layers"]):
        ours, hf = f"layers.{i}", f"model.layers.{i}"
        recipes += norm_recipes(f"{ours}.input_layernorm", f"{hf}.input_layernorm", False)
        recipes += norm_recipes(f"{ours}.post_attention_layernorm", f"{hf}.post_attention_layernorm", False)
        kinds = ("weight", "bias") if bias or flags["--add-qkv-bias"] else ("weight",)
        for kind in kinds:
            qkv = tuple(f"{hf}.self_attn.{p}_proj.{kind}" for p in "qkv")
            recipes.append(Recipe(f"{ours}.self_attention.query_key_value.{kind}", qkv, fuse_qkv(kv)))
        for kind in ("weight", "bias") if bias else ("weight",):
            recipes += [
                Recipe(f"{ours}.self_attention.dense.{kind}", (f"{hf}.self_attn.o_proj.{kind}",), take),
                Recipe(f"{ours}.mlp.dense_h_to_4h.{kind}",
                       (f"{hf}.mlp.gate_proj.{kind}", f"{hf}.mlp.up_proj.{kind}"), cat0),
                Recipe(f"{ours}.mlp.dense_4h_to_h.{kind}", (f"{hf}.mlp.down_proj.{kind}",), take),
            ]
    recipes += norm_recipes("final_norm.final_layernorm", "model.norm", False)
    return recipes + head_recipe(flags, "lm_head.weight")


register_family(HFFamily(model_type="llama", hf_class="LlamaForCausalLM", architecture="llama",
                         flags=llama_flags, tensors=llama_tensors))
register_family(HFFamily(model_type="mistral", hf_class="MistralForCausalLM", architecture="mistral",
                         flags=mistral_flags, tensors=llama_tensors))
register_family(HFFamily(model_type="qwen2", hf_class="Qwen2ForCausalLM", architecture="qwen2",
                         flags=qwen2_flags, tensors=llama_tensors))


def qwen3_flags(cfg: Config) -> dict[str, Any]:
    """Qwen3: Llama without biases, with a per-head query/key RMSNorm (``--qk-layernorm``)."""
    cfg.expect("attention_bias", (False,), False, "has no mapping: Qwen3's biases are on q/k/v/o but not "
               "the MLP, and our linear biases are all on or all off")
    flags = llama_like_flags(cfg, bias=False, qkv_bias=False, window=bool(cfg.get("use_sliding_window", False)))
    return {**flags, "--qk-layernorm": True}


def qwen3_tensors(flags: dict[str, Any]) -> list[Recipe]:
    """Llama's recipes plus each layer's ``q_norm``/``k_norm``."""
    recipes = llama_tensors(flags)
    for i in range(flags["--num-layers"]):
        for ours, hf in (("q_layernorm", "q_norm"), ("k_layernorm", "k_norm")):
            recipes += norm_recipes(f"layers.{i}.self_attention.{ours}", f"model.layers.{i}.self_attn.{hf}", False)
    return recipes


register_family(HFFamily(model_type="qwen3", hf_class="Qwen3ForCausalLM", architecture="qwen3",
                         flags=qwen3_flags, tensors=qwen3_tensors))


def olmo2_flags(cfg: Config) -> dict[str, Any]:
    """OLMo-2: Llama without biases, an RMSNorm over the whole q and k projections, and the
    block's norms on the attention and MLP outputs."""
    cfg.expect("attention_bias", (False,), False, "has no mapping: OLMo-2's biases are on q/k/v/o but not "
               "the MLP, and our linear biases are all on or all off")
    flags = llama_like_flags(cfg, bias=False, qkv_bias=False, window=False)
    return {**flags, "--qk-layernorm": True, "--qk-layernorm-scope": "projection", "--norm-placement": "output"}


def olmo2_tensors(flags: dict[str, Any]) -> list[Recipe]:
    """Llama's recipes with OLMo-2's norm names: our first norm (on the attention output) is its
    ``post_attention_layernorm``, our second (on the MLP output) its ``post_feedforward_layernorm``."""
    rename = {"input_layernorm": "post_attention_layernorm", "post_attention_layernorm": "post_feedforward_layernorm"}
    recipes = []
    for r in qwen3_tensors(flags):
        parts = r.name.split(".")
        if len(parts) == 4 and parts[2] in rename:
            r = Recipe(r.name, (r.hf_names[0].replace(f".{parts[2]}.", f".{rename[parts[2]]}."),), r.combine)
        recipes.append(r)
    return recipes


register_family(HFFamily(model_type="olmo2", hf_class="Olmo2ForCausalLM", architecture="olmo2",
                         flags=olmo2_flags, tensors=olmo2_tensors))


# ---- GPT-NeoX (Pythia) -------------------------------------------------------------------------


def _gelu(cfg: Config, key: str, default: str) -> bool:
    """True for a tanh GeLU (``--openai-gelu``), False for the exact one."""
    act = cfg.expect(key, ("gelu", *TANH_GELU), default)
    return act in TANH_GELU


def neox_flags(cfg: Config) -> dict[str, Any]:
    """GPT-NeoX: LayerNorm, GeLU MLP, biases, parallel residual, partial rotary."""
    d, heads = cfg.need("hidden_size"), cfg.need("num_attention_heads")
    cfg.expect("attention_bias", (True,), True, "has no mapping: GPT-NeoX's MLP keeps its biases")
    if cfg.get("num_key_value_heads", heads) != heads:
        raise cfg.refuse("num_key_value_heads", cfg.get("num_key_value_heads"), "is not supported for GPT-NeoX")
    return {
        "--num-layers": cfg.need("num_hidden_layers"),
        "--hidden-size": d,
        "--ffn-hidden-size": cfg.need("intermediate_size"),
        "--num-attention-heads": heads,
        "--num-key-value-heads": heads,
        "--kv-channels": d // heads,
        "--max-position-embeddings": cfg.need("max_position_embeddings"),
        **rope_flags(cfg, default_partial=0.25, scaling=False),
        "--normalization": "layernorm",
        "--norm-epsilon": float(cfg.get("layer_norm_eps", 1e-5)),
        "--swiglu": False,
        "--disable-bias-linear": False,
        "--untie-embeddings-and-output-weights": not cfg.get("tie_word_embeddings", False),
        "--use-parallel-residual": bool(cfg.get("use_parallel_residual", True)),
        "--openai-gelu": _gelu(cfg, "hidden_act", "gelu"),
    }


def neox_tensors(flags: dict[str, Any]) -> list[Recipe]:
    """Recipes of GPT-NeoX (names as Pythia's files spell them)."""
    recipes = [Recipe("embedding.word_embeddings.weight", ("gpt_neox.embed_in.weight",), take)]
    pairs = (("self_attention.query_key_value", "attention.query_key_value"),
             ("self_attention.dense", "attention.dense"),
             ("mlp.dense_h_to_4h", "mlp.dense_h_to_4h"), ("mlp.dense_4h_to_h", "mlp.dense_4h_to_h"))
    for i in range(flags["--num-layers"]):
        ours, hf = f"layers.{i}", f"gpt_neox.layers.{i}"
        recipes += norm_recipes(f"{ours}.input_layernorm", f"{hf}.input_layernorm", True)
        recipes += norm_recipes(f"{ours}.post_attention_layernorm", f"{hf}.post_attention_layernorm", True)
        for a, b in pairs:
            recipes += [Recipe(f"{ours}.{a}.{k}", (f"{hf}.{b}.{k}",), take) for k in ("weight", "bias")]
    recipes += norm_recipes("final_norm.final_layernorm", "gpt_neox.final_layer_norm", True)
    return recipes + head_recipe(flags, "embed_out.weight|lm_head.weight")


register_family(HFFamily(model_type="gpt_neox", hf_class="GPTNeoXForCausalLM", architecture="gpt_neox",
                         flags=neox_flags, tensors=neox_tensors))


# ---- GPT-2 -------------------------------------------------------------------------------------


def gpt2_flags(cfg: Config) -> dict[str, Any]:
    """GPT-2: learned positions, LayerNorm, GeLU (``gelu_new`` = tanh), biases, MHA."""
    d, heads = cfg.need("n_embd"), cfg.need("n_head")
    cfg.expect("scale_attn_weights", (True,), True, "has no mapping: our attention is scaled by 1/sqrt(head_dim)")
    cfg.expect("scale_attn_by_inverse_layer_idx", (False,), False, "has no mapping (per-layer attention scale)")
    cfg.expect("add_cross_attention", (False,), False, "has no mapping (decoder-only models only)")
    return {
        "--num-layers": cfg.need("n_layer"),
        "--hidden-size": d,
        "--ffn-hidden-size": cfg.get("n_inner", 4 * d),
        "--num-attention-heads": heads,
        "--num-key-value-heads": heads,
        "--kv-channels": d // heads,
        "--max-position-embeddings": cfg.need("n_positions"),
        "--use-rotary-position-embeddings": False,
        "--normalization": "layernorm",
        "--norm-epsilon": float(cfg.get("layer_norm_epsilon", 1e-5)),
        "--swiglu": False,
        "--disable-bias-linear": False,
        "--untie-embeddings-and-output-weights": not cfg.get("tie_word_embeddings", True),
        "--openai-gelu": _gelu(cfg, "activation_function", "gelu_new"),
    }


def gpt2_tensors(flags: dict[str, Any]) -> list[Recipe]:
    """Recipes of GPT-2 (Conv1D weights transposed; ``c_attn`` split and regrouped)."""
    heads = flags["--num-attention-heads"]
    recipes = [Recipe("embedding.word_embeddings.weight", ("wte.weight",), take),
               Recipe("embedding.position_embeddings.weight", ("wpe.weight",), take)]
    for i in range(flags["--num-layers"]):
        ours, hf = f"layers.{i}", f"h.{i}"
        recipes += norm_recipes(f"{ours}.input_layernorm", f"{hf}.ln_1", True)
        recipes += norm_recipes(f"{ours}.post_attention_layernorm", f"{hf}.ln_2", True)
        recipes += [
            Recipe(f"{ours}.self_attention.query_key_value.weight", (f"{hf}.attn.c_attn.weight",),
                   split_fused_qkv(heads, transpose=True)),
            Recipe(f"{ours}.self_attention.query_key_value.bias", (f"{hf}.attn.c_attn.bias",),
                   split_fused_qkv(heads, transpose=False)),
            Recipe(f"{ours}.self_attention.dense.weight", (f"{hf}.attn.c_proj.weight",), transposed),
            Recipe(f"{ours}.self_attention.dense.bias", (f"{hf}.attn.c_proj.bias",), take),
            Recipe(f"{ours}.mlp.dense_h_to_4h.weight", (f"{hf}.mlp.c_fc.weight",), transposed),
            Recipe(f"{ours}.mlp.dense_h_to_4h.bias", (f"{hf}.mlp.c_fc.bias",), take),
            Recipe(f"{ours}.mlp.dense_4h_to_h.weight", (f"{hf}.mlp.c_proj.weight",), transposed),
            Recipe(f"{ours}.mlp.dense_4h_to_h.bias", (f"{hf}.mlp.c_proj.bias",), take),
        ]
    recipes += norm_recipes("final_norm.final_layernorm", "ln_f", True)
    return recipes + head_recipe(flags, "lm_head.weight")


# The hub's gpt2 files have no "transformer." prefix; save_pretrained writes it.
register_family(HFFamily(model_type="gpt2", hf_class="GPT2LMHeadModel", architecture="gpt2",
                         flags=gpt2_flags, tensors=gpt2_tensors, prefixes=("transformer.", "")))
