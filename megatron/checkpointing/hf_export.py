"""Export a checkpoint of ours to Hugging Face Llama format (``LlamaForCausalLM``).

Writes ``config.json`` and ``model.safetensors`` (plus ``tokenizer.json`` when the run used a
Hugging Face tokenizer), loadable with ``transformers.AutoModelForCausalLM.from_pretrained``.
Only Llama-shaped models export: RMSNorm, SwiGLU, RoPE, causal attention. Our RoPE already uses
the rotate-half layout of HF Llama, so q/k rows need no interleave permutation; the fused QKV
only needs regrouping from our per-key/value-head groups to HF's separate projections.

Name map (ours -> HF), per layer ``i``::

    layers.i.input_layernorm                 model.layers.i.input_layernorm
    layers.i.self_attention.query_key_value  model.layers.i.self_attn.{q,k,v}_proj
    layers.i.self_attention.dense            model.layers.i.self_attn.o_proj
    layers.i.post_attention_layernorm        model.layers.i.post_attention_layernorm
    layers.i.mlp.dense_h_to_4h ([gate; up])  model.layers.i.mlp.{gate,up}_proj
    layers.i.mlp.dense_4h_to_h               model.layers.i.mlp.down_proj

The embedding (and untied head) are trimmed from the padded ``vocab_size`` rows to the
tokenizer's ``original_vocab_size``: padded rows are never real tokens, so the logits of every
real token are unchanged (only the softmax loses the padded rows' small share).
Transformers is not needed to export, only to load the result.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import torch

from megatron.checkpointing.checkpoint import CheckpointError
from megatron.checkpointing.convert import step_dir
from megatron.checkpointing.reader import WEIGHT, SavedCheckpoint
from megatron.checkpointing.universal import UniversalCheckpoint, is_universal
from megatron.config.fields import ConfigError
from megatron.data.tokenizers import file_sha256
from megatron.model.spec import GPTSpec

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def open_checkpoint(source: str) -> SavedCheckpoint | UniversalCheckpoint:
    """A reader for ``source``: a universal checkpoint (``zero/``), ``SAVE`` or ``SAVE/global_stepN``.

    Raises:
        CheckpointError: Not a directory, or not a checkpoint of ours.
    """
    if not os.path.isdir(source):
        raise CheckpointError(f"--input: {source} is not a directory")
    if is_universal(source):
        return UniversalCheckpoint(source)
    return SavedCheckpoint(step_dir(source))


def check_llama_shaped(spec: GPTSpec) -> None:
    """Refuse a model that ``LlamaForCausalLM`` cannot represent.

    Raises:
        ConfigError: Naming the training flags that differ from Llama's architecture.
    """
    problems = []
    if spec.normalization != "rmsnorm":
        problems.append(f"--normalization rmsnorm (this model: {spec.normalization})")
    if not spec.swiglu:
        problems.append("--swiglu (this model: GeLU MLP)")
    if spec.position_embedding != "rope":
        problems.append("--use-rotary-position-embeddings (this model: learned positions)")
    if not spec.causal:
        problems.append("causal attention (this model: bidirectional, masked-diffusion objective)")
    multipliers = (spec.embedding_mult, spec.logit_mult, spec.residual_mult)
    if multipliers != (1.0, 1.0, 1.0) or spec.attention_scale is not None:
        problems.append("no muP/CompleteP forward multipliers (this model: --scaling-recipe with "
                        f"embedding/logit/residual x{multipliers}, attention scale {spec.attention_scale})")
    if problems:
        raise ConfigError(f"--input: not a Llama-shaped model; Llama needs {', '.join(problems)}")


def split_qkv(fused: torch.Tensor, spec: GPTSpec) -> tuple[torch.Tensor, ...]:
    """HF ``(q, k, v)`` rows of our fused QKV weight or bias.

    Our rows are grouped per key/value head g: ``[q heads of g, k_g, v_g]``; HF keeps query heads
    in order (head h belongs to group ``h // group``), then the key and value heads in order.
    """
    kv, hd = spec.num_key_value_heads, spec.head_dim
    group = spec.num_attention_heads // kv
    rest = fused.shape[1:]
    grouped = fused.reshape(kv, group + 2, hd, *rest)
    q = grouped[:, :group].reshape(kv * group * hd, *rest)
    k = grouped[:, group].reshape(kv * hd, *rest)
    v = grouped[:, group + 1].reshape(kv * hd, *rest)
    return q, k, v


def llama_state_dict(ckpt: Any, spec: GPTSpec) -> dict[str, torch.Tensor]:
    """HF Llama tensors (fp32) from a reader with ``.full(name, "fp32")`` (names as in ``full_shapes``)."""

    def get(name: str) -> torch.Tensor:
        return ckpt.full(name, WEIGHT)

    vocab = spec.original_vocab_size
    out = {"model.embed_tokens.weight": get("embedding.word_embeddings.weight")[:vocab]}
    suffixes = ("weight", "bias") if spec.bias else ("weight",)
    for i in range(spec.num_layers):
        ours, hf = f"layers.{i}", f"model.layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{hf}.{norm}.weight"] = get(f"{ours}.{norm}.weight")
        for kind in suffixes:
            fused = get(f"{ours}.self_attention.query_key_value.{kind}")
            for p, t in zip("qkv", split_qkv(fused, spec), strict=True):
                out[f"{hf}.self_attn.{p}_proj.{kind}"] = t
            out[f"{hf}.self_attn.o_proj.{kind}"] = get(f"{ours}.self_attention.dense.{kind}")
            gate, up = get(f"{ours}.mlp.dense_h_to_4h.{kind}").chunk(2, dim=0)
            out.update({f"{hf}.mlp.gate_proj.{kind}": gate, f"{hf}.mlp.up_proj.{kind}": up})
            out[f"{hf}.mlp.down_proj.{kind}"] = get(f"{ours}.mlp.dense_4h_to_h.{kind}")
    out["model.norm.weight"] = get("final_norm.final_layernorm.weight")
    # Tied: no lm_head entry; transformers ties it to embed_tokens on load (tie_word_embeddings).
    if not spec.tie_embeddings:
        out["lm_head.weight"] = get("output.output_layer.weight")[:vocab]
    return out


def llama_config(spec: GPTSpec, dtype: str, eos_token_id: int | None) -> dict[str, Any]:
    """``config.json`` of ``LlamaForCausalLM`` for ``spec``.

    RoPE theta is written both as the legacy ``rope_theta`` (transformers 4.x) and inside
    ``rope_parameters`` (5.x), so either major version reads it.
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": spec.original_vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.ffn_hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.norm_epsilon,
        "rope_theta": float(spec.rotary_base),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(spec.rotary_base)},
        "attention_bias": spec.bias,
        "mlp_bias": spec.bias,
        "initializer_range": spec.init_method_std,
        "tie_word_embeddings": spec.tie_embeddings,
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def _hf_tokenizer_file(metadata: dict[str, Any]) -> str | None:
    """The run's ``tokenizer.json`` when it used ``--tokenizer-type hf`` and the file is unchanged."""
    info = metadata.get("tokenizer") or {}
    files = info.get("files") or []
    if info.get("type") != "hf" or not files:
        return None
    path = files[0]
    if not os.path.isfile(path):
        log.warning("hf export: tokenizer %s is missing; no tokenizer.json exported", path)
        return None
    saved = (info.get("sha256") or [None])[0]
    if saved is not None and file_sha256(path) != saved:
        log.warning("hf export: %s changed since training; no tokenizer.json exported", path)
        return None
    return path


def _write_tokenizer(path: str, out: str, spec: GPTSpec) -> int | None:
    """Copy ``tokenizer.json`` (and a minimal ``tokenizer_config.json``); return the EOD id."""
    from tokenizers import Tokenizer as RustTokenizer

    from megatron.data.tokenizers import find_eod_token

    shutil.copyfile(path, os.path.join(out, "tokenizer.json"))
    tokenizer = RustTokenizer.from_file(path)
    eod = find_eod_token(tokenizer)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": spec.seq_length,
        "eos_token": eod,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return None if eod is None else tokenizer.token_to_id(eod)


def export_llama(source: str, output: str, dtype: str = "float32") -> dict[str, Any]:
    """Write checkpoint ``source`` as a Hugging Face Llama model directory ``output``.

    Args:
        source: ``SAVE`` (its ``latest``), ``SAVE/global_stepN`` or a universal checkpoint.
        output: Target directory; must not exist. Written under a temporary name and renamed
            when complete, so a failed export leaves nothing behind.
        dtype: ``float32``, ``bfloat16`` or ``float16`` for the saved tensors.

    Returns:
        ``{"output", "parameters", "dtype", "vocab_size", "tokenizer", "bytes"}``.

    Raises:
        ConfigError: Unknown dtype, or a model that is not Llama-shaped.
        CheckpointError: Unreadable source or existing output.
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: unknown dtype {dtype!r}; known: {sorted(DTYPES)}")
    if os.path.exists(output):
        raise CheckpointError(f"--output: {output} exists; remove it or choose another directory")
    ckpt = open_checkpoint(source)
    spec = ckpt.spec
    check_llama_shaped(spec)
    # Fresh contiguous copies: safetensors refuses views that share storage (gate/up halves).
    tensors = {
        name: t.to(DTYPES[dtype]).clone(memory_format=torch.contiguous_format)
        for name, t in llama_state_dict(ckpt, spec).items()
    }
    tokenizer = _hf_tokenizer_file(ckpt.metadata)
    tmp = f"{output.rstrip('/')}.tmp-{os.getpid()}"
    try:
        os.makedirs(tmp)
        eos = _write_tokenizer(tokenizer, tmp, spec) if tokenizer else None
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(llama_config(spec, dtype, eos), f, indent=2)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    parameters = sum(t.numel() for t in tensors.values())
    log.info("hf export: %s -> %s (%d parameters, %s)", source, output, parameters, dtype)
    return {
        "output": output,
        "parameters": parameters,
        "dtype": dtype,
        "vocab_size": spec.original_vocab_size,
        "tokenizer": tokenizer,
        "bytes": os.path.getsize(os.path.join(output, "model.safetensors")),
    }
