"""Model shape, architecture options and initialization."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from megatron.config.fields import (
    SECTION,
    ConfigError,
    knob,
    require,
    require_positive,
    require_ratio,
)


@dataclass(**SECTION)
class ModelConfig:
    """GPT architecture. Defaults are GPT-2 small with rotary positions."""

    num_layers: int = 12
    """Number of transformer layers."""
    hidden_size: int = 768
    """Transformer hidden size d."""
    ffn_hidden_size: int | None = None
    """MLP hidden size; default 4*d, or floor((8d/3)/64)*64 with --swiglu."""
    num_attention_heads: int = 12
    """Number of query heads."""
    num_key_value_heads: int | None = knob(None, aliases=("--num-query-groups",))
    """Number of key/value heads for grouped-query attention; default: one per query head."""
    kv_channels: int | None = None
    """Per-head dimension; default hidden_size / num_attention_heads."""
    seq_length: int = 1024
    """Training sequence length in tokens."""
    max_position_embeddings: int | None = None
    """Size of the learned position table (and the RoPE cache); default seq_length."""
    use_rotary_position_embeddings: bool = True
    """Rotary position embeddings (RoPE); --no-use-rotary-position-embeddings selects learned positions."""
    rotary_base: float = knob(10000.0, aliases=("--rope-theta",))
    """RoPE base frequency theta."""
    normalization: Literal["layernorm", "rmsnorm"] = "layernorm"
    """Normalization layer type."""
    norm_epsilon: float = knob(1e-5, aliases=("--layernorm-epsilon",))
    """Epsilon of the normalization layers."""
    swiglu: bool = False
    """SwiGLU MLP (gated SiLU) instead of GeLU."""
    disable_bias_linear: bool = False
    """No bias in any linear layer."""
    untie_embeddings_and_output_weights: bool = False
    """Separate output-layer weights instead of reusing the word embeddings."""
    hidden_dropout: float = 0.0
    """Dropout on the attention and MLP outputs before the residual add."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    init_method_std: float | None = None
    """Std of the normal init of hidden weights (default 0.02); output projections get
    std/sqrt(2*num_layers)."""
    small_init: bool = False
    """Use std sqrt(2/(5*hidden)) for hidden weights (Nguyen & Salazar 2019; the AuroraGPT recipe)."""
    adjust_word_embedding_init: bool = False
    """Initialize the word embeddings with --word-embedding-init-std instead of --init-method-std."""
    word_embedding_init_std: float | None = None
    """Std of the word-embedding init with --adjust-word-embedding-init (the seeds use 0.632)."""
    make_vocab_size_divisible_by: int = 128
    """Pad the vocabulary to a multiple of this (must be divisible by the TP size)."""
    recompute_activations: bool = knob(False, aliases=("--checkpoint-activations",))
    """Recompute each transformer layer's activations in the backward pass (saves memory); the same as --recompute-granularity full."""
    recompute_granularity: Literal["full", "selective"] | None = None
    """What to recompute in backward: full = whole transformer layers (see --recompute-method), selective = only the attention core (softmax(QK^T)V), the largest activations per FLOP."""
    recompute_method: Literal["uniform", "block"] | None = None
    """With --recompute-granularity full: uniform = every layer, in chunks of --recompute-num-layers layers recomputed together; block = only the first --recompute-num-layers layers (the rest keep their activations). Default uniform."""
    recompute_num_layers: int | None = knob(None, aliases=("--checkpoint-num-layers",))
    """Layers per recomputed chunk (uniform) or layers recomputed (block); needs --recompute-granularity full (or --recompute-activations). Default 1 (uniform) / all layers (block)."""
    use_flash_attn: bool = knob(False, aliases=("--use-flash-attn-v2", "--use-flash-attn-triton"))
    """Run attention only on SDPA's flash kernel (an error at start where it cannot run: e.g. attention dropout on CPU). The kernel SDPA picks is reported at start either way."""
    fused_linear_cross_entropy: bool = False
    """Compute the output layer and the cross-entropy together, --fused-ce-chunk-tokens tokens at a time, never holding the full fp32 logits (less memory; one extra head matmul in backward). Not with --lwf-weight, pipeline parallelism or --zero-stage 3."""
    fused_ce_chunk_tokens: int = 4096
    """Tokens per chunk of --fused-linear-cross-entropy: the loss holds about chunk * vocab / TP fp32 logits at a time."""
    rotary_percent: float = 1.0
    """Fraction of each head's dimensions that RoPE rotates (the first ones; GPT-NeoX/Pythia use 0.25)."""
    add_qkv_bias: bool = False
    """A bias on the query/key/value projection even with --disable-bias-linear (Qwen2)."""
    use_rope_scaling: bool = False
    """Llama 3.1's RoPE frequency rule (original context 8192, low/high frequency factors 1 and 4) with --rope-scaling-factor."""
    rope_scaling_factor: float = 8.0
    """The factor of --use-rope-scaling (Llama 3.1: 8, Llama 3.2: 32)."""
    rotary_seq_len_interpolation_factor: float | None = None
    """Linear RoPE scaling: positions are divided by this factor (Hugging Face rope_scaling type linear)."""
    use_parallel_residual: bool = False
    """Attention and MLP both read the layer input: x + attn(norm1(x)) + mlp(norm2(x)) (GPT-NeoX/Pythia, GPT-J)."""
    openai_gelu: bool = False
    """The tanh approximation of GeLU (GPT-2's gelu_new) instead of the exact one."""
    qk_layernorm: bool = False
    """Normalize each head's queries and keys (a --normalization norm over the head dimension, one weight shared by all heads) after the projection, before RoPE (Qwen3)."""
    qk_layernorm_scope: Literal["head", "projection"] = "head"
    """What --qk-layernorm normalizes: each head (head) or the whole query and key projections, an RMSNorm with one weight per value (projection: OLMo-2)."""
    norm_placement: Literal["input", "output"] = "input"
    """Where each block's two norms go: on the attention/MLP input (input: pre-norm) or on their output, before the residual add (output: OLMo-2)."""

    def __post_init__(self) -> None:
        require_positive(
            self,
            "num_layers",
            "hidden_size",
            "ffn_hidden_size",
            "num_attention_heads",
            "num_key_value_heads",
            "kv_channels",
            "seq_length",
            "max_position_embeddings",
            "rotary_base",
            "norm_epsilon",
            "init_method_std",
            "word_embedding_init_std",
            "make_vocab_size_divisible_by",
            "fused_ce_chunk_tokens",
            "rope_scaling_factor",
            "rotary_seq_len_interpolation_factor",
        )
        self._check_import_options()
        require_ratio(self, "hidden_dropout", "attention_dropout", closed=False)
        if self.small_init and self.init_method_std is not None:
            raise ConfigError(
                "--small-init: sets the init std to sqrt(2/(5*hidden)); drop --init-method-std "
                f"{self.init_method_std} or --small-init"
            )
        if self.kv_channels is None:
            require(
                self.hidden_size % self.num_attention_heads == 0,
                "--num-attention-heads",
                f"{self.num_attention_heads} does not divide --hidden-size {self.hidden_size}",
            )
        if self.num_key_value_heads is not None:
            require(
                self.num_attention_heads % self.num_key_value_heads == 0,
                "--num-key-value-heads",
                f"{self.num_key_value_heads} does not divide "
                f"--num-attention-heads {self.num_attention_heads}",
            )
        if self.max_position_embeddings is not None:
            require(
                self.max_position_embeddings >= self.seq_length,
                "--max-position-embeddings",
                f"{self.max_position_embeddings} is shorter than --seq-length {self.seq_length}",
            )
        # A flag that silently does nothing is a bug our users hit before (docs/design.md §11).
        require(
            self.adjust_word_embedding_init == (self.word_embedding_init_std is not None),
            "--word-embedding-init-std",
            "goes together with --adjust-word-embedding-init (give both or neither)",
        )
        require(
            self.fused_linear_cross_entropy or self.fused_ce_chunk_tokens == 4096,
            "--fused-ce-chunk-tokens",
            "only used with --fused-linear-cross-entropy (FUSED_CE=1); add it or drop this flag",
        )
        self._check_recompute()

    def _check_import_options(self) -> None:
        require(0.0 < self.rotary_percent <= 1.0, "--rotary-percent", f"{self.rotary_percent} is not in (0, 1]")
        require(
            self.use_rope_scaling or self.rope_scaling_factor == 8.0,
            "--rope-scaling-factor",
            "only used with --use-rope-scaling; add it or drop this flag",
        )
        rope_only = {
            "--rotary-percent": self.rotary_percent != 1.0,
            "--use-rope-scaling": self.use_rope_scaling,
            "--rotary-seq-len-interpolation-factor": self.rotary_seq_len_interpolation_factor is not None,
        }
        for flag, given in rope_only.items():
            require(
                self.use_rotary_position_embeddings or not given,
                flag,
                "only applies to rotary position embeddings (drop --no-use-rotary-position-embeddings)",
            )
        require(not (self.openai_gelu and self.swiglu), "--openai-gelu", "has no effect with --swiglu")
        if self.qk_layernorm_scope == "projection":
            require(self.qk_layernorm, "--qk-layernorm-scope", "projection needs --qk-layernorm")
            require(self.normalization == "rmsnorm", "--qk-layernorm-scope",
                    "projection is an RMSNorm; add --normalization rmsnorm")
        require(not (self.norm_placement == "output" and self.use_parallel_residual), "--norm-placement",
                "output has no meaning with --use-parallel-residual (both branches read the same input)")
        if self.kv_channels is not None or self.hidden_size % self.num_attention_heads == 0:
            rotary = int(self.head_dim * self.rotary_percent)
            require(
                rotary > 0 and rotary % 2 == 0,
                "--rotary-percent",
                f"{self.rotary_percent} of head dim {self.head_dim} is not a positive even width",
            )

    def _check_recompute(self) -> None:
        if self.recompute_activations and self.recompute_granularity == "selective":
            raise ConfigError(
                "--recompute-granularity: selective disagrees with --recompute-activations "
                "(full-layer recompute); give one of them"
            )
        full = self.recompute_activations or self.recompute_granularity == "full"
        for flag, value in (
            ("--recompute-method", self.recompute_method),
            ("--recompute-num-layers", self.recompute_num_layers),
        ):
            require(
                value is None or full,
                flag,
                "needs --recompute-granularity full (or --recompute-activations)",
            )
        require_positive(self, "recompute_num_layers")
        require(
            self.recompute_num_layers is None or self.recompute_num_layers <= self.num_layers,
            "--recompute-num-layers",
            f"{self.recompute_num_layers} is more than --num-layers {self.num_layers}",
        )

    @property
    def recompute(self) -> str | None:
        """The recompute granularity in effect: full, selective or None."""
        if self.recompute_activations:
            return "full"
        return self.recompute_granularity

    @property
    def init_std(self) -> float:
        """The hidden-weight init std: --init-method-std, sqrt(2/(5d)) with --small-init, or 0.02."""
        if self.small_init:
            return math.sqrt(2.0 / (5.0 * self.hidden_size))
        return 0.02 if self.init_method_std is None else self.init_method_std

    @property
    def head_dim(self) -> int:
        """Per-head dimension after defaults."""
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads after defaults."""
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        """MLP hidden size after defaults (docs/design.md §6 rule for SwiGLU)."""
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        if self.swiglu:
            return swiglu_ffn_size(self.hidden_size)
        return 4 * self.hidden_size

    @property
    def positions(self) -> int:
        """Length of the position table / RoPE cache after defaults."""
        return self.max_position_embeddings or self.seq_length


def swiglu_ffn_size(hidden: int) -> int:
    """Default SwiGLU MLP width (docs/design.md §6): ``floor((8d/3)/64)*64``, at least 64.

    Integer arithmetic (``8d // 192``) avoids float rounding at exact multiples.
    """
    return max(64, (8 * hidden) // (3 * 64) * 64)
