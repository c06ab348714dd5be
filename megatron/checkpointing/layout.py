"""Where every parameter lives: canonical names, full shapes and tensor-parallel layouts.

A *canonical* name is the dense model's (``layers.3.mlp.dense_h_to_4h.weight``); the pipeline
model's names (``4.mlp.dense_h_to_4h.weight``, ``tied_modules.embed.word_embeddings.weight``)
map onto it, so a checkpoint taken at any PP size converts to the same universal tensors.

A *layout* says how the full tensor is split over TP ranks (see ``megatron/model/layers.py``):

- ``replicated``: every rank holds the full tensor (norms, row-parallel biases, positions; the
  per-head query/key norms of ``--qk-layernorm``, shared by every rank's heads; over the
  whole projection, ``--qk-layernorm-scope projection``, they are ``dim0`` like the heads);
- ``dim0`` / ``dim1``: contiguous split of rows (column-parallel, vocab) / columns (row-parallel);
- ``swiglu``: the fused ``[gate; up]`` fc1, split with stride 2 (rank r holds ``[gate_r; up_r]``).

The vocabulary is padded independently of TP (``pad_vocab_size``), so embeddings need no
re-padding between layouts and the padded rows travel with the checkpoint.

Torch is only needed by ``split``/``merge``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from megatron.model.spec import GPTSpec

if TYPE_CHECKING:
    import torch

Layout = Literal["replicated", "dim0", "dim1", "swiglu"]

# DeepSpeed's keys in ``universal_checkpoint_info`` (deepspeed.checkpoint.constants).
UNIVERSAL_CHECKPOINT_INFO = "universal_checkpoint_info"


def canonical_name(name: str, num_layers: int) -> str:
    """The dense-model name of a dense or pipeline parameter name.

    Pipeline layer ``j`` is: 0 the embedding, 1..L transformer layer ``j - 1``, L + 1 the final
    norm, L + 2 the output head; tied embeddings are ``tied_modules.embed``.

    Raises:
        ValueError: A name that belongs to neither model.
    """
    if name.startswith(("embedding.", "layers.", "final_norm.", "output.")):
        return name
    if name.startswith("tied_modules.embed."):
        return "embedding." + name[len("tied_modules.embed."):]
    match = re.fullmatch(r"(\d+)\.(.+)", name)
    if match is None:
        raise ValueError(f"{name!r} is not a parameter of our GPT")
    j, rest = int(match.group(1)), match.group(2)
    if j == 0:
        return f"embedding.{rest}"
    if j <= num_layers:
        return f"layers.{j - 1}.{rest}"
    if j == num_layers + 1:
        return f"final_norm.{rest}"
    if j == num_layers + 2:
        return f"output.{rest}"
    raise ValueError(f"{name!r}: pipeline layer {j} does not exist in a {num_layers}-layer GPT")


def tp_layout(name: str, spec: GPTSpec) -> Layout:
    """How canonical parameter ``name`` is split over tensor-parallel ranks."""
    if name.endswith(("word_embeddings.weight", "query_key_value.weight", "query_key_value.bias",
                      "output_layer.weight")):
        return "dim0"
    if spec.qk_layernorm_scope == "projection" and name.endswith(("q_layernorm.weight", "k_layernorm.weight")):
        return "dim0"  # one entry per value of the heads, split with them
    if name.endswith(("self_attention.dense.weight", "dense_4h_to_h.weight")):
        return "dim1"
    if name.endswith(("dense_h_to_4h.weight", "dense_h_to_4h.bias")):
        return "swiglu" if spec.swiglu else "dim0"
    return "replicated"


def full_shapes(spec: GPTSpec) -> dict[str, tuple[int, ...]]:
    """Canonical name -> full (TP=1) shape of every trainable parameter."""
    d, f, V = spec.hidden_size, spec.ffn_hidden_size, spec.vocab_size
    qkv = (spec.num_attention_heads + 2 * spec.num_key_value_heads) * spec.head_dim
    q = spec.num_attention_heads * spec.head_dim
    fc1 = 2 * f if spec.swiglu else f
    norm_keys = ("weight", "bias") if spec.normalization == "layernorm" else ("weight",)
    shapes: dict[str, tuple[int, ...]] = {"embedding.word_embeddings.weight": (V, d)}
    if spec.position_embedding == "learned":
        shapes["embedding.position_embeddings.weight"] = (spec.max_position_embeddings, d)
    for i in range(spec.num_layers):
        p = f"layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            shapes.update({f"{p}.{norm}.{k}": (d,) for k in norm_keys})
        shapes[f"{p}.self_attention.query_key_value.weight"] = (qkv, d)
        if spec.qk_layernorm and spec.qk_layernorm_scope == "projection":
            shapes[f"{p}.self_attention.q_layernorm.weight"] = (q,)
            shapes[f"{p}.self_attention.k_layernorm.weight"] = ((qkv - q) // 2,)
        elif spec.qk_layernorm:
            for norm in ("q_layernorm", "k_layernorm"):
                shapes.update({f"{p}.self_attention.{norm}.{k}": (spec.head_dim,) for k in norm_keys})
        shapes[f"{p}.self_attention.dense.weight"] = (d, q)
        shapes[f"{p}.mlp.dense_h_to_4h.weight"] = (fc1, d)
        shapes[f"{p}.mlp.dense_4h_to_h.weight"] = (d, f)
        if spec.qkv_bias:
            shapes[f"{p}.self_attention.query_key_value.bias"] = (qkv,)
        if spec.bias:
            shapes[f"{p}.self_attention.dense.bias"] = (d,)
            shapes[f"{p}.mlp.dense_h_to_4h.bias"] = (fc1,)
            shapes[f"{p}.mlp.dense_4h_to_h.bias"] = (d,)
    shapes.update({f"final_norm.final_layernorm.{k}": (d,) for k in norm_keys})
    if not spec.tie_embeddings:
        shapes["output.output_layer.weight"] = (V, d)
    return shapes


def split(full: torch.Tensor, layout: Layout, rank: int, size: int) -> torch.Tensor:
    """This TP rank's slice of ``full`` (a view where possible)."""
    if layout == "replicated" or size == 1:
        return full
    if layout == "dim0":
        return full.chunk(size, dim=0)[rank]
    if layout == "dim1":
        return full.chunk(size, dim=1)[rank]
    import torch

    gate, up = full.chunk(2, dim=0)
    return torch.cat([gate.chunk(size, dim=0)[rank], up.chunk(size, dim=0)[rank]])


def merge(slices: list[torch.Tensor], layout: Layout) -> torch.Tensor:
    """The full tensor from the TP ranks' slices (in rank order); inverse of ``split``."""
    import torch

    if layout == "replicated" or len(slices) == 1:
        return slices[0]
    if layout == "dim0":
        return torch.cat(slices, dim=0)
    if layout == "dim1":
        return torch.cat(slices, dim=1)
    halves = [s.chunk(2, dim=0) for s in slices]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)


def deepspeed_universal_info(spec: GPTSpec) -> dict[str, object]:
    """``universal_checkpoint_info`` in DeepSpeed's vocabulary, for its ``ds_to_universal``.

    Patterns match dense and pipeline names alike (``re.match`` from the start). Only patterns
    that match a parameter of this model are listed: DeepSpeed checks that each one is used.
    Vocabulary patterns are deliberately absent: our padding does not depend on TP, so the padded
    rows are kept (stripping them would change the softmax of a resumed run).
    """
    shapes = full_shapes(spec)
    by_layout: dict[str, list[str]] = {"replicated": [], "dim1": [], "swiglu": []}
    for name in shapes:
        layout = tp_layout(name, spec)
        if layout in by_layout:
            suffix = re.sub(r"^(layers\.\d+|embedding|final_norm|output)\.", "", name)
            pattern = rf".*{re.escape(suffix)}$"
            if pattern not in by_layout[layout]:
                by_layout[layout].append(pattern)
    return {
        "universal_checkpoint_version": 0.2,
        "tp_replicated_parameter_patterns": by_layout["replicated"],
        "parameter_with_row_parallelism_patterns": by_layout["dim1"],
        "parameter_with_2_sub_params_cat_dim_0": by_layout["swiglu"],
        "pipeline_replicated_parameter_patterns": [r"tied_modules\..*"],
        "original_vocab_size": spec.original_vocab_size,
        "padded_vocab_size": spec.vocab_size,
    }
