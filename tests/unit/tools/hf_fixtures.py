"""Tiny random Hugging Face models written by ``transformers`` itself (no download), with a
word-level ``tokenizer.json`` covering the vocabulary, for the import tests and the bench.

Weights are redrawn after construction (std 0.2, norms around 1, non-zero biases): HF's init
zeroes biases and keeps attention nearly uniform, which would hide a wrong bias, q/k layout or
RoPE mapping under the 1e-5 tolerance.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

VOCAB = 96
EOD = "<|endoftext|>"

# name -> (config class, model class, config kwargs)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    # GQA, head_dim 16 != 32 / 4, Llama 3.1 rope rule, biases, tied.
    "llama3-gqa-bias-tied": ("LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-5,
        attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    # MHA, linear rope scaling, theta 500, untied, no biases.
    "llama-linear-untied": ("LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, tie_word_embeddings=False,
        rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0})),
    "mistral-gqa": ("MistralConfig", "MistralForCausalLM", dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, sliding_window=None, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "qwen2-gqa-tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    # Per-head q/k RMSNorm, explicit head_dim 16 != 32 / 4, GQA, tied.
    "qwen3-qknorm-tied": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    # q/k RMSNorm over the whole projections, norms on the branch outputs, GQA, untied.
    "olmo2-gqa": ("Olmo2Config", "Olmo2ForCausalLM", dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 5e5})),
    # Pythia: parallel residual, rotary 0.25 of 16 dims, biases, untied embed_out.
    "pythia": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, use_parallel_residual=True, hidden_act="gelu", tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(
        n_embd=32, n_layer=2, n_head=4, n_positions=64, activation_function="gelu_new",
        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)),
}


def write_tokenizer(directory: str, size: int = VOCAB) -> str:
    """A word-level ``tokenizer.json`` of ``size`` ids whose last one is the EOD token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(size - 1)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens([EOD])
    path = os.path.join(directory, "tokenizer.json")
    tokenizer.save(path)
    return path


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Redraw every parameter (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            is_norm = p.dim() == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight")
            p.copy_(1.0 + 0.1 * noise if is_norm else 0.2 * noise)


def build_model(name: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """The random ``transformers`` model of family ``name`` (fp32, eval mode)."""
    import transformers

    config_class, model_class, kwargs = FAMILIES[name]
    config = getattr(transformers, config_class)(**{"vocab_size": VOCAB, **kwargs, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config).eval()
    randomize(model, seed)
    return model


def save_model(model: torch.nn.Module, directory: str, *, tokenizer: bool = True, legacy: bool = False,
               **save: Any) -> str:
    """``save_pretrained`` into ``directory`` (+ a tokenizer; ``legacy``: 4.x config keys)."""
    model.save_pretrained(directory, **save)
    if tokenizer:
        write_tokenizer(directory)
    if legacy:
        to_legacy_config(os.path.join(directory, "config.json"))
    return directory


def to_legacy_config(path: str) -> None:
    """Rewrite a 5.x ``config.json`` in the schema hub checkpoints carry (transformers 4.x):
    ``rope_theta``/``rope_scaling``/``rotary_pct``/``rotary_emb_base`` instead of ``rope_parameters``."""
    with open(path) as f:
        config = json.load(f)
    params = dict(config.pop("rope_parameters", None) or {})
    theta = params.pop("rope_theta", 10000.0)
    partial = params.pop("partial_rotary_factor", None)
    if config["model_type"] == "gpt_neox":
        config.update(rotary_emb_base=theta, rotary_pct=partial if partial is not None else 0.25)
    else:
        config["rope_theta"] = theta
    if params.get("rope_type", "default") != "default":
        config["rope_scaling"] = {"type" if params["rope_type"] == "linear" else "rope_type": params.pop("rope_type"),
                                  **params}
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def save_bin(model: torch.nn.Module, directory: str) -> str:
    """The model as ``pytorch_model.bin`` (what older hub checkpoints ship; transformers 5 only
    writes safetensors)."""
    save_model(model, directory)
    os.remove(os.path.join(directory, "model.safetensors"))
    torch.save(model.state_dict(), os.path.join(directory, "pytorch_model.bin"))
    return directory
