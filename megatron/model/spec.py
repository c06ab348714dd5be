"""The resolved model shape: what the model code is built from (no Nones, no CLI knowledge).

Torch-free, so the plan (and ``--dry-run``) can compute parameter counts and FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True, slots=True)
class GPTSpec:
    """Every architectural value of the GPT, after defaults and padding.

    Attributes:
        num_layers: Transformer layers L.
        hidden_size: d.
        ffn_hidden_size: MLP width f.
        num_attention_heads: Query heads.
        num_key_value_heads: Key/value heads (GQA groups).
        head_dim: Per-head dimension.
        vocab_size: Padded vocabulary (rows of the embedding).
        original_vocab_size: The tokenizer's vocabulary before padding.
        seq_length: Training sequence length.
        max_position_embeddings: Position table / RoPE cache length.
        position_embedding: ``rope`` or ``learned``.
        rotary_base: RoPE theta.
        normalization: ``layernorm`` or ``rmsnorm``.
        norm_epsilon: Norm epsilon.
        swiglu: Gated SiLU MLP.
        bias: Linear layers have biases.
        tie_embeddings: The output head reuses the word embeddings.
        hidden_dropout: Residual-branch dropout.
        attention_dropout: Attention-probability dropout.
        init_method_std: Std of hidden weights.
        output_init_std: Std of the output projections (scaled by 1/sqrt(2L)).
        embedding_init_std: Std of the word embeddings.
        recompute: Recompute whole transformer layers in backward (granularity full).
        recompute_selective: Recompute only the attention core in backward (granularity
            selective).
        recompute_method: With ``recompute``: ``uniform`` (every layer, in chunks of
            ``recompute_num_layers``) or ``block`` (the first ``recompute_num_layers`` layers).
        recompute_num_layers: Chunk size (uniform) or number of recomputed layers (block).
        causal: Causal attention (False for the masked-diffusion objective).
        seed: Base seed of the per-tensor initialization.
        hidden_init_std: Std of the blocks' input matrices (QKV, MLP in) when it differs from
            ``init_method_std`` (muP: sigma/sqrt(m_N)); None = ``init_method_std``.
        embedding_mult: Multiplier of the embedding output (muP alpha_in).
        logit_mult: Multiplier of the head input (muP alpha_out / m_N; tied and untied heads).
        residual_mult: Multiplier of every residual branch (CompleteP m_L^-alpha).
        attention_scale: Softmax scale; None = 1/sqrt(head_dim).
        fused_ce_chunk_tokens: Tokens per chunk of the fused output layer + cross-entropy
            (``megatron.model.fused_loss``); 0 = logits, then the loss (unfused).
        rotary_percent: Fraction of each head's dimensions RoPE rotates (the first ones).
        add_qkv_bias: The fused QKV projection has a bias even when ``bias`` is off (Qwen2).
        rope_scaling_factor: Llama 3.1's frequency rule with this factor; 1 = none.
        rotary_interpolation: Linear RoPE scaling: positions are divided by it; 1 = none.
        parallel_residual: ``x + attn(norm1(x)) + mlp(norm2(x))`` (GPT-NeoX/GPT-J).
        openai_gelu: The tanh approximation of GeLU (GPT-2's ``gelu_new``).
        qk_layernorm: A norm of ``normalization``'s type over each head's ``head_dim`` query
            and key values, after the projection and before RoPE (one weight shared by all
            heads: Qwen3, Megatron-LM's ``--qk-layernorm``).
        qk_layernorm_scope: ``head`` (above) or ``projection``: an RMSNorm over the whole query
            and key projections, one weight entry per value (OLMo-2).
        norm_placement: ``input`` (pre-norm) or ``output``: each branch's norm takes its output,
            before the residual add, and nothing normalizes its input (OLMo-2).
        sequence_parallel: Megatron sequence parallelism at TP > 1 (``[s / tp, b, h]`` shards
            between the layers; no effect at TP=1).
    """

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    original_vocab_size: int
    seq_length: int
    max_position_embeddings: int
    position_embedding: Literal["rope", "learned"] = "rope"
    rotary_base: float = 10000.0
    normalization: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_epsilon: float = 1e-5
    swiglu: bool = False
    bias: bool = True
    tie_embeddings: bool = True
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    output_init_std: float = 0.02
    embedding_init_std: float = 0.02
    recompute: bool = False
    causal: bool = True
    seed: int = 1234
    hidden_init_std: float | None = None
    embedding_mult: float = 1.0
    logit_mult: float = 1.0
    residual_mult: float = 1.0
    attention_scale: float | None = None
    fused_ce_chunk_tokens: int = 0
    rotary_percent: float = 1.0
    add_qkv_bias: bool = False
    rope_scaling_factor: float = 1.0
    rotary_interpolation: float = 1.0
    parallel_residual: bool = False
    openai_gelu: bool = False
    qk_layernorm: bool = False
    qk_layernorm_scope: Literal["head", "projection"] = "head"
    norm_placement: Literal["input", "output"] = "input"
    sequence_parallel: bool = False
    recompute_selective: bool = False
    recompute_method: Literal["uniform", "block"] = "uniform"
    recompute_num_layers: int = 1

    @property
    def qkv_bias(self) -> bool:
        """The fused QKV projection has a bias."""
        return self.bias or self.add_qkv_bias

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each head that RoPE rotates."""
        return int(self.head_dim * self.rotary_percent)

    @property
    def hidden_std(self) -> float:
        """Init std of the blocks' input matrices (QKV, MLP in)."""
        return self.init_method_std if self.hidden_init_std is None else self.hidden_init_std

    def num_parameters(self) -> int:
        """Exact number of trainable scalars (all TP shards together)."""
        d, f, L, V = self.hidden_size, self.ffn_hidden_size, self.num_layers, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        norm = 2 * d if self.normalization == "layernorm" else d
        attn = d * (q + 2 * kv) + q * d
        mlp = d * f * (2 if self.swiglu else 1) + f * d
        bias = (q + 2 * kv + d + f * (2 if self.swiglu else 1) + d) if self.bias else 0
        bias += (q + 2 * kv) if self.add_qkv_bias and not self.bias else 0
        qk_norm = 2 * (2 if self.normalization == "layernorm" else 1) * self.head_dim if self.qk_layernorm else 0
        if self.qk_layernorm and self.qk_layernorm_scope == "projection":
            qk_norm = q + kv
        per_layer = attn + mlp + bias + 2 * norm + qk_norm
        embeddings = V * d + (self.max_position_embeddings * d if self.position_embedding == "learned" else 0)
        head = 0 if self.tie_embeddings else V * d
        return L * per_layer + embeddings + norm + head

    def matmul_parameters(self) -> int:
        """Parameters that take part in a matmul per token: all but the embedding lookups,
        plus the output head (which reuses the embedding when tied)."""
        lookup = self.vocab_size * self.hidden_size
        if self.position_embedding == "learned":
            lookup += self.max_position_embeddings * self.hidden_size
        head = self.vocab_size * self.hidden_size if self.tie_embeddings else 0
        return self.num_parameters() - lookup + head

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6*N + 12*L*d*s (docs/design.md §10; N = matmul parameters,
        the second term is attention's QK^T and AV, forward and backward, without the causal
        halving)."""
        return 6.0 * self.matmul_parameters() + 12.0 * self.num_layers * self.hidden_size * self.seq_length


def approx_parameters(num_layers: int, hidden: int, ffn: int, vocab: int) -> int:
    """docs/design.md §6's budget formula ``N = 4*L*d^2 + 3*L*d*f + 6*L*d + V*d``: attention (4 d x d),
    a SwiGLU MLP (3 d x f), ~6d of norms and biases per layer and one tied embedding table
    (``GPTSpec.num_parameters`` is the exact count of a built model)."""
    L, d, f, V = num_layers, hidden, ffn, vocab
    return 4 * L * d * d + 3 * L * d * f + 6 * L * d + V * d


def training_flops(num_parameters: int, tokens: int) -> int:
    """Training compute ``C = 6*N*D`` (forward 2ND, backward 4ND; Kaplan et al. 2020)."""
    return 6 * num_parameters * tokens


def pad_vocab_size(vocab_size: int, multiple: int) -> int:
    """Round the vocabulary up to a multiple of ``multiple`` (independent of TP, so shapes and
    checkpoints do not change with the tensor-parallel size)."""
    return int(math.ceil(vocab_size / multiple) * multiple)
