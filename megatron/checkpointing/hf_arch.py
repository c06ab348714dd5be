"""The Hugging Face export targets: one registered ``ExporterSpec`` per ``transformers`` class.

Every entry says which of our models it represents *exactly* (``problems(spec)`` lists the
training flags that stand in the way; an empty list means the mapping is faithful), how our
tensors become its tensors (lazily, one at a time, so the writer can stream them into shards),
and its ``config.json``. ``select_exporter`` takes the first entry (in registration order) that
accepts the model, or refuses it naming every architecture's missing flags.

=============  =====================================================================
entry          our model
=============  =====================================================================
llama          RMSNorm + SwiGLU + RoPE; biases on/off, tied/untied, GQA, any head_dim,
               ``rope_scaling`` llama3/linear
qwen2          as llama with q/k/v biases only (``--add-qkv-bias --disable-bias-linear``)
mistral        as llama without biases or RoPE scaling (chosen for models imported from it)
qwen3          as llama without biases or RoPE scaling, with ``--qk-layernorm``
olmo2          as qwen3 with ``--qk-layernorm-scope projection --norm-placement output``
gpt_neox       LayerNorm + GeLU (or tanh GeLU) + RoPE, biases, MHA, parallel residual and
               partial rotary as the model has them
starcoder2     LayerNorm + GeLU + RoPE with GQA or without biases (``use_bias``)
gpt2           LayerNorm + GeLU (or ``gelu_new``) + learned absolute positions, biases, MHA
=============  =====================================================================

Layouts. Our fused QKV rows are grouped per key/value head, ``[q heads of g, k_g, v_g]`` for
each group g (see ``megatron/model/layers.py``). With one query head per group (MHA) that is
exactly GPT-NeoX's per-head ``[q_h, k_h, v_h]`` fused layout, so NeoX takes the tensor as is;
Llama/Starcoder2 get separate q/k/v projections and GPT-2 a ``[q; k; v]`` fused Conv1D
(stored transposed, ``[in, out]``). Our RoPE rotates halves (``cat(-x2, x1)``) over the whole
head, which is what all three RoPE targets do; NeoX needs ``partial_rotary_factor=1`` (its
default rotates a quarter). Our GeLU is the exact (erf) one: ``hidden_act="gelu"`` everywhere,
never the tanh approximations GPT-2 and Starcoder2 default to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from megatron.config.fields import ConfigError
from megatron.model.spec import GPTSpec
from megatron.registry import Registry

Getter = Callable[[str], torch.Tensor]
"""Full fp32 tensor of one of our canonical parameter names."""


@dataclass(frozen=True, slots=True)
class HFTensor:
    """One tensor of the export: its HF name, shape, and how to compute it (lazily)."""

    name: str
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]


@dataclass(frozen=True, kw_only=True, slots=True)
class ExporterSpec:
    """One export target.

    Attributes:
        name: Registry name (``--architecture``).
        hf_class: The ``transformers`` class that loads the export.
        problems: Flags (with this model's values) that prevent a faithful mapping; empty: fits.
        tensors: ``(get, spec) -> HFTensor``s in file order.
        config: ``spec -> config.json`` (without dtype and token ids, added by the caller).
    """

    name: str
    hf_class: str
    problems: Callable[[GPTSpec], list[str]]
    tensors: Callable[[Getter, GPTSpec], Iterator[HFTensor]]
    config: Callable[[GPTSpec], dict[str, Any]]


EXPORTERS: Registry[ExporterSpec] = Registry(
    "export target", "--architecture", loader="megatron.checkpointing.hf_targets"
)
"""``--architecture`` value -> target, in registration order (``hf_targets`` registers them)."""


def register_exporter(name: str, hf_class: str, *, problems: Callable[[GPTSpec], list[str]],
                      config: Callable[[GPTSpec], dict[str, Any]]) -> Callable:
    """Decorator registering a tensor generator as export target ``name``."""

    def decorate(tensors: Callable[[Getter, GPTSpec], Iterator[HFTensor]]) -> Callable:
        EXPORTERS.add(name, ExporterSpec(name=name, hf_class=hf_class, problems=problems,
                                         tensors=tensors, config=config))
        return tensors

    return decorate


def select_exporter(spec: GPTSpec, name: str | None = None) -> ExporterSpec:
    """The exporter for ``spec``: ``name`` if given, else the first that represents it exactly.

    Raises:
        ConfigError: Unknown name, or no (or not the named) target represents the model; the
            message names the flags each target needs.
    """
    if name is not None:
        exporter = EXPORTERS.get(name)
        problems = exporter.problems(spec)
        if problems:
            raise ConfigError(f"--architecture {name}: {exporter.hf_class} cannot represent "
                              f"this model; it needs {', '.join(problems)}")
        return exporter
    reasons = []
    for exporter in EXPORTERS.values():
        problems = exporter.problems(spec)
        if not problems:
            return exporter
        reasons.append(f"{exporter.name} ({exporter.hf_class}) needs {', '.join(problems)}")
    raise ConfigError("--input: no transformers class represents this model exactly: " + "; ".join(reasons))


# ---- shape checks ------------------------------------------------------------------------------


def _common(spec: GPTSpec) -> list[str]:
    if not spec.causal:
        return ["causal attention (this model is bidirectional: the masked-diffusion objective)"]
    multipliers = (spec.embedding_mult, spec.logit_mult, spec.residual_mult)
    if multipliers != (1.0, 1.0, 1.0) or spec.attention_scale is not None:
        return ["no muP/CompleteP forward multipliers (this model: --scaling-recipe with embedding/"
                f"logit/residual x{multipliers}, attention scale {spec.attention_scale})"]
    return []


OPTION_FLAGS = {
    "parallel_residual": "no --use-parallel-residual",
    "rotary_percent": "no --rotary-percent",
    "rope_scaling": "no --use-rope-scaling / --rotary-seq-len-interpolation-factor",
    "qkv_bias_only": "no --add-qkv-bias without linear biases",
    "openai_gelu": "no --openai-gelu",
    "qk_layernorm": "no --qk-layernorm",
    "qk_projection": "no --qk-layernorm-scope projection",
    "output_norms": "no --norm-placement output",
}


def options_used(spec: GPTSpec) -> set[str]:
    """The import-era model options ``spec`` uses (keys of ``OPTION_FLAGS``)."""
    used = {
        "parallel_residual": spec.parallel_residual,
        "rotary_percent": spec.rotary_percent != 1.0,
        "rope_scaling": spec.rope_scaling_factor != 1.0 or spec.rotary_interpolation != 1.0,
        "qkv_bias_only": spec.add_qkv_bias and not spec.bias,
        "openai_gelu": spec.openai_gelu,
        "qk_layernorm": spec.qk_layernorm,
        "qk_projection": spec.qk_layernorm and spec.qk_layernorm_scope == "projection",
        "output_norms": spec.norm_placement == "output",
    }
    return {k for k, v in used.items() if v}


def _options(spec: GPTSpec, allowed: tuple[str, ...]) -> list[str]:
    return [f"{OPTION_FLAGS[k]} (this model uses it)" for k in sorted(options_used(spec) - set(allowed))]


def _shape(spec: GPTSpec, *, norm: str, swiglu: bool, rope: bool, allowed: tuple[str, ...] = ()) -> list[str]:
    problems = _common(spec) + _options(spec, allowed)
    if spec.normalization != norm:
        problems.append(f"--normalization {norm} (this model: {spec.normalization})")
    if spec.swiglu != swiglu:
        problems.append("--swiglu (this model: GeLU MLP)" if swiglu else "a GeLU MLP (this model: --swiglu)")
    if (spec.position_embedding == "rope") != rope:
        problems.append("--use-rotary-position-embeddings (this model: learned positions)" if rope
                        else "--no-use-rotary-position-embeddings (this model: RoPE)")
    return problems


def _mha_default_head(spec: GPTSpec, *, bias: bool) -> list[str]:
    problems = []
    if spec.num_key_value_heads != spec.num_attention_heads:
        problems.append(f"no --num-key-value-heads (this model: {spec.num_key_value_heads} key/value "
                        f"heads for {spec.num_attention_heads} query heads)")
    if bias and not spec.bias:
        problems.append("linear biases (this model: --disable-bias-linear)")
    return problems + _default_head(spec)


def _default_head(spec: GPTSpec) -> list[str]:
    if spec.head_dim * spec.num_attention_heads != spec.hidden_size:
        return [f"no --kv-channels (this model: head dim {spec.head_dim} x {spec.num_attention_heads} "
                f"heads != hidden {spec.hidden_size})"]
    return []


def llama_problems(spec: GPTSpec) -> list[str]:
    """Flags keeping ``spec`` from ``LlamaForCausalLM``."""
    return _shape(spec, norm="rmsnorm", swiglu=True, rope=True, allowed=("rope_scaling",))


def mistral_problems(spec: GPTSpec) -> list[str]:
    """Flags keeping ``spec`` from ``MistralForCausalLM`` (no biases, plain RoPE)."""
    problems = _shape(spec, norm="rmsnorm", swiglu=True, rope=True)
    return problems + (["--disable-bias-linear (this model has linear biases)"] if spec.bias else [])


def qwen2_problems(spec: GPTSpec) -> list[str]:
    """Flags keeping ``spec`` from ``Qwen2ForCausalLM`` (q/k/v biases only)."""
    problems = _shape(spec, norm="rmsnorm", swiglu=True, rope=True, allowed=("qkv_bias_only",))
    if not (spec.add_qkv_bias and not spec.bias):
        problems.append("--add-qkv-bias --disable-bias-linear (biases on q/k/v only)")
    return problems + _default_head(spec)


def qwen3_problems(spec: GPTSpec) -> list[str]:
    """Flags keeping ``spec`` from ``Qwen3ForCausalLM`` (per-head q/k RMSNorm, no biases)."""
    problems = _shape(spec, norm="rmsnorm", swiglu=True, rope=True, allowed=("qk_layernorm",))
    if not spec.qk_layernorm or spec.qk_layernorm_scope != "head":
        problems.append("--qk-layernorm (a per-head query/key norm)")
    return problems + (["--disable-bias-linear (this model has linear biases)"] if spec.bias else [])


def olmo2_problems(spec: GPTSpec) -> list[str]:
    """Flags keeping ``spec`` from ``Olmo2ForCausalLM`` (q/k norms over the projections, norms on
    the branch outputs, no biases, head_dim = hidden / heads)."""
    allowed = ("qk_layernorm", "qk_projection", "output_norms")
    problems = _shape(spec, norm="rmsnorm", swiglu=True, rope=True, allowed=allowed)
    if not (spec.qk_layernorm and spec.qk_layernorm_scope == "projection"):
        problems.append("--qk-layernorm --qk-layernorm-scope projection")
    if spec.norm_placement != "output":
        problems.append("--norm-placement output")
    problems += ["--disable-bias-linear (this model has linear biases)"] if spec.bias else []
    return problems + _default_head(spec)


def neox_problems(spec: GPTSpec) -> list[str]:
    """Flags keeping ``spec`` from ``GPTNeoXForCausalLM`` (its MLP always has biases)."""
    allowed = ("parallel_residual", "rotary_percent", "openai_gelu")
    return _shape(spec, norm="layernorm", swiglu=False, rope=True, allowed=allowed) + _mha_default_head(spec, bias=True)


def starcoder2_problems(spec: GPTSpec) -> list[str]:
    """Flags keeping ``spec`` from ``Starcoder2ForCausalLM``."""
    return _shape(spec, norm="layernorm", swiglu=False, rope=True) + _default_head(spec)


def gpt2_problems(spec: GPTSpec) -> list[str]:
    """Flags keeping ``spec`` from ``GPT2LMHeadModel`` (always biased, MHA)."""
    return (_shape(spec, norm="layernorm", swiglu=False, rope=False, allowed=("openai_gelu",))
            + _mha_default_head(spec, bias=True))


# ---- tensor helpers ----------------------------------------------------------------------------


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


def shapes_of(spec: GPTSpec) -> dict[str, tuple[int, ...]]:
    """Full (TP=1) shape of each of our canonical parameters."""
    from megatron.checkpointing.layout import full_shapes

    return full_shapes(spec)


def _vocab_rows(get: Getter, name: str, spec: GPTSpec) -> Callable[[], torch.Tensor]:
    # Padded vocabulary rows are never real tokens: dropping them leaves every real logit as is.
    return lambda: get(name)[: spec.original_vocab_size]


def direct_tensor(get: Getter, ours: str, hf: str, shapes: dict, transpose: bool = False) -> HFTensor:
    """Our tensor ``ours`` as HF's ``hf`` unchanged (or transposed, for GPT-2's Conv1D)."""
    shape = shapes[ours][::-1] if transpose else shapes[ours]
    return HFTensor(hf, tuple(shape), (lambda: get(ours).t()) if transpose else (lambda: get(ours)))


def qkv_tensors(get: Getter, ours: str, spec: GPTSpec, hf: str, kind: str) -> Iterator[HFTensor]:
    """Separate ``{hf}.{q,k,v}_proj.{kind}`` tensors from our fused ``ours``."""
    width = {"q": spec.num_attention_heads * spec.head_dim, "k": spec.num_key_value_heads * spec.head_dim}
    width["v"] = width["k"]
    for i, p in enumerate("qkv"):
        shape = (width[p], spec.hidden_size) if kind == "weight" else (width[p],)
        yield HFTensor(f"{hf}.{p}_proj.{kind}", shape, lambda i=i: split_qkv(get(ours), spec)[i])


def embedding_tensor(get: Getter, spec: GPTSpec, name: str) -> HFTensor:
    """The word embedding without the padded vocabulary rows."""
    return HFTensor(name, (spec.original_vocab_size, spec.hidden_size),
                    _vocab_rows(get, "embedding.word_embeddings.weight", spec))


def head_tensors(get: Getter, spec: GPTSpec, name: str) -> Iterator[HFTensor]:
    """The untied output head without padded rows (nothing when tied)."""
    # Tied: no head tensor; transformers ties it to the input embedding on load.
    if not spec.tie_embeddings:
        yield HFTensor(name, (spec.original_vocab_size, spec.hidden_size),
                       _vocab_rows(get, "output.output_layer.weight", spec))


def norm_tensors(get: Getter, spec: GPTSpec, ours: str, hf: str) -> Iterator[HFTensor]:
    """A norm's weight (and LayerNorm's bias)."""
    keys = ("weight", "bias") if spec.normalization == "layernorm" else ("weight",)
    for k in keys:
        yield HFTensor(f"{hf}.{k}", (spec.hidden_size,), lambda k=k: get(f"{ours}.{k}"))
