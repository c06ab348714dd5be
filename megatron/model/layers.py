"""GPT building blocks on megatron-core's tensor-parallel layers.

Activations are ``[batch, seq, hidden]``, except under sequence parallelism
(``megatron.model.sequence_parallel``), where the layers pass ``[seq / tp, batch, hidden]``
shards between them as megatron-core does. Each block is a pipeline-stage-sized module: the dense
model chains them, the pipeline model hands them to DeepSpeed as layer specs.

TP layouts (chosen so the *full* weight is the same at every TP size):
- fused QKV: output rows grouped per key/value head, ``[q_1..q_r, k, v]`` for each group, so a
  contiguous TP split hands every rank whole groups;
- SwiGLU fc1: logical rows ``[gate; up]``, sharded with stride 2 so rank r holds
  ``[gate_r; up_r]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core import tensor_parallel as mtp
from megatron.core.model_parallel_config import ModelParallelConfig
from torch import nn
from torch.utils.checkpoint import checkpoint

from megatron.model import sequence_parallel as sp
from megatron.model import ulysses
from megatron.model.init import normal_init
from megatron.model.qk_norm import build_qk_norms
from megatron.model.rope import apply_rope, rope_tables
from megatron.model.spec import GPTSpec


def build_mp_config(tp: int) -> ModelParallelConfig:
    """megatron-core layer config: CPU initialization of the full weight, then a TP split."""
    return ModelParallelConfig(
        tensor_model_parallel_size=tp,
        use_cpu_initialization=True,
        perform_initialization=True,
        params_dtype=torch.float32,
        sequence_parallel=False,
        gradient_accumulation_fusion=False,
    )


def _drop_empty_extra_state(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    if state_dict.get(prefix + "_extra_state", 0) is None:
        del state_dict[prefix + "_extra_state"]


def _default_extra_state(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    state_dict.setdefault(prefix + "_extra_state", None)


def without_empty_extra_state(layer: nn.Module) -> nn.Module:
    """megatron-core's TP layers save an ``_extra_state`` of None (a Transformer Engine hook):
    keep it out of checkpoints (DeepSpeed's ``ds_to_universal`` reads every module entry as a
    tensor) and accept its absence on load."""
    layer.register_state_dict_post_hook(_drop_empty_extra_state)
    layer.register_load_state_dict_pre_hook(_default_extra_state)
    return layer


class _SequenceParallelLayerNorm(nn.LayerNorm):
    """LayerNorm on sequence shards (or on this rank's heads): weight and bias gradients summed
    over the TP group."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = sp.replicated(self.weight), sp.replicated(self.bias)
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class _SequenceParallelRMSNorm(nn.RMSNorm):
    """RMSNorm on sequence shards (or on this rank's heads): weight gradient summed over the TP
    group."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, sp.replicated(self.weight), self.eps)


def build_norm(spec: GPTSpec, width: int | None = None, summed: bool | None = None) -> nn.Module:
    """LayerNorm or RMSNorm over ``width`` (default the hidden size); the same parameters
    whether or not their gradients are ``summed`` over the TP group (default: under sequence
    parallelism, where each rank sees only its positions)."""
    split = sequence_parallel(spec) if summed is None else summed
    width = spec.hidden_size if width is None else width
    if spec.normalization == "rmsnorm":
        cls = _SequenceParallelRMSNorm if split else nn.RMSNorm
        return cls(width, eps=spec.norm_epsilon)
    cls = _SequenceParallelLayerNorm if split else nn.LayerNorm
    return cls(width, eps=spec.norm_epsilon)


def _tp_size() -> int:
    return parallel_state.get_tensor_model_parallel_world_size()


def sequence_parallel(spec: GPTSpec) -> bool:
    """Whether this model runs sequence-parallel (``--sequence-parallel`` at TP > 1)."""
    return spec.sequence_parallel and _tp_size() > 1


class SelfAttention(nn.Module):
    """Multi-head / grouped-query self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, spec: GPTSpec, layer: int, config: ModelParallelConfig):
        super().__init__()
        tp = _tp_size()
        self.spec = spec
        self.split = sequence_parallel(spec)
        self.kv_heads = spec.num_key_value_heads // tp
        self.group = spec.num_attention_heads // spec.num_key_value_heads
        self.heads = self.kv_heads * self.group
        self.attend = (  # DeepSpeed-Ulysses (megatron/model/ulysses.py), None when off
            ulysses.distributed_attention(self.attention_core, self.kv_heads) if ulysses.sp_size() > 1 else None
        )
        q_width = spec.num_attention_heads * spec.head_dim
        qkv_width = (spec.num_attention_heads + 2 * spec.num_key_value_heads) * spec.head_dim
        name = f"layers.{layer}.attention"
        self.query_key_value = without_empty_extra_state(
            mtp.ColumnParallelLinear(
                spec.hidden_size,
                qkv_width,
                config=config,
                init_method=normal_init(spec.hidden_std, spec.seed, f"{name}.query_key_value"),
                bias=spec.qkv_bias,
                gather_output=False,
            )
        )
        self.dense = without_empty_extra_state(
            mtp.RowParallelLinear(
                q_width,
                spec.hidden_size,
                config=config,
                init_method=normal_init(spec.output_init_std, spec.seed, f"{name}.dense"),
                bias=spec.bias,
                input_is_parallel=True,
                skip_bias_add=False,
            )
        )
        if spec.qk_layernorm:  # per head or over the projection (megatron.model.qk_norm)
            self.q_layernorm, self.k_layernorm = build_qk_norms(
                spec, self.heads, self.kv_heads, tp, lambda: build_norm(spec, spec.head_dim, summed=tp > 1)
            )

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale) v over ``[b, heads, s, head_dim]`` (SDPA)."""
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=self.spec.attention_dropout if self.training else 0.0,
            is_causal=self.spec.causal,
            enable_gqa=self.group > 1,
            scale=self.spec.attention_scale,  # None: 1/sqrt(head_dim); muP: 1/head_dim
        )

    def attention_core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The core, checkpointed under ``--recompute-granularity selective``."""
        if self.spec.recompute_selective and self.training and torch.is_grad_enabled():
            # --recompute-granularity selective: keep q, k, v; recompute the core in backward
            # (non-reentrant checkpointing restores the RNG state, so dropout masks match).
            return checkpoint(self.core, q, k, v, use_reentrant=False)
        return self.core(q, k, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hd = self.spec.head_dim
        if self.split:  # [s / tp, b, h] shards -> [b, s, qkv / tp]
            qkv = sp.column_parallel(self.query_key_value, x).transpose(0, 1)
        else:
            qkv, _ = self.query_key_value(x)
        b, s = qkv.shape[:2]
        qkv = qkv.reshape(b, s, self.kv_heads, self.group + 2, hd)
        q = qkv[:, :, :, : self.group].reshape(b, s, self.heads, hd)
        k = qkv[:, :, :, self.group]
        v = qkv[:, :, :, self.group + 1]
        if self.spec.qk_layernorm:  # after the projection, before RoPE (Qwen3, OLMo-2)
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        if self.spec.position_embedding == "rope":
            cos, sin = rope_tables(
                self.spec.max_position_embeddings, self.spec.rotary_dim, self.spec.rotary_base,
                x.device, x.dtype, self.spec.rope_scaling_factor, self.spec.rotary_interpolation,
            )
            start = ulysses.position_offset(s)  # Ulysses: this slice's global positions
            cos, sin = cos[start : start + s], sin[start : start + s]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.attend is not None:  # Ulysses: all-to-all to heads / SP of the whole sequence
            out = self.attend(q, k, v).transpose(1, 2)
        else:
            out = self.attention_core(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        if self.split:  # [s, b, heads / tp * hd] -> [s / tp, b, h] shards
            return sp.row_parallel(self.dense, out.permute(2, 0, 1, 3).reshape(s, b, self.heads * hd))
        out, _ = self.dense(out.transpose(1, 2).reshape(b, s, self.heads * hd))
        return out


class MLP(nn.Module):
    """GeLU MLP, or SwiGLU (silu(gate) * up) with a fused, stride-2 sharded fc1."""

    def __init__(self, spec: GPTSpec, layer: int, config: ModelParallelConfig):
        super().__init__()
        self.swiglu = spec.swiglu
        self.gelu_approximate = "tanh" if spec.openai_gelu else "none"
        self.split = sequence_parallel(spec)
        width = spec.ffn_hidden_size * (2 if spec.swiglu else 1)
        name = f"layers.{layer}.mlp"
        self.dense_h_to_4h = without_empty_extra_state(
            mtp.ColumnParallelLinear(
                spec.hidden_size,
                width,
                config=config,
                init_method=normal_init(spec.hidden_std, spec.seed, f"{name}.dense_h_to_4h"),
                bias=spec.bias,
                gather_output=False,
                stride=2 if spec.swiglu else 1,
            )
        )
        self.dense_4h_to_h = without_empty_extra_state(
            mtp.RowParallelLinear(
                spec.ffn_hidden_size,
                spec.hidden_size,
                config=config,
                init_method=normal_init(spec.output_init_std, spec.seed, f"{name}.dense_4h_to_h"),
                bias=spec.bias,
                input_is_parallel=True,
                skip_bias_add=False,
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split:
            h = sp.column_parallel(self.dense_h_to_4h, x)
        else:
            h, _ = self.dense_h_to_4h(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate=self.gelu_approximate)
        if self.split:
            return sp.row_parallel(self.dense_4h_to_h, h)
        out, _ = self.dense_4h_to_h(h)
        return out


def recomputes_layer(spec: GPTSpec, layer: int) -> bool:
    """Whether transformer layer ``layer`` checkpoints itself: full recompute, by layer (uniform
    with chunks of 1) or among the first ``recompute_num_layers`` (block). Uniform chunks of
    more layers are checkpointed by the model around each chunk."""
    if not spec.recompute:
        return False
    if spec.recompute_method == "block":
        return layer < spec.recompute_num_layers
    return spec.recompute_num_layers == 1


class TransformerLayer(nn.Module):
    """Pre-norm block: x + drop(attn(norm(x))), then + drop(mlp(norm(.))); with a parallel
    residual (GPT-NeoX) both branches read x: x + drop(attn(norm1(x))) + drop(mlp(norm2(x)));
    with ``norm_placement`` output (OLMo-2) the norms take the branch outputs:
    x + drop(norm1(attn(x))), then + drop(norm2(mlp(.))) (the same two parameter names)."""

    def __init__(self, spec: GPTSpec, layer: int, config: ModelParallelConfig):
        super().__init__()
        self.spec = spec
        self.layer_number = layer
        self.split = sequence_parallel(spec)
        self.recompute = recomputes_layer(spec, layer)
        self.input_layernorm = build_norm(spec)
        self.self_attention = SelfAttention(spec, layer, config)
        self.post_attention_layernorm = build_norm(spec)
        self.mlp = MLP(spec, layer, config)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.spec.hidden_dropout if self.training else 0.0
        drop = sp.dropout if self.split else F.dropout
        if self.spec.norm_placement == "output":  # OLMo-2: the norms take each branch's output
            x = x + self._branch(drop(self.input_layernorm(self.self_attention(x)), p))
            return x + self._branch(drop(self.post_attention_layernorm(self.mlp(x)), p))
        attn = self._branch(drop(self.self_attention(self.input_layernorm(x)), p))
        if self.spec.parallel_residual:
            return x + attn + self._branch(drop(self.mlp(self.post_attention_layernorm(x)), p))
        x = x + attn
        return x + self._branch(drop(self.mlp(self.post_attention_layernorm(x)), p))

    def _branch(self, y: torch.Tensor) -> torch.Tensor:
        # CompleteP/depth-muP: m_L^-alpha on each branch, after dropout, before the residual add.
        mult = self.spec.residual_mult
        return y if mult == 1.0 else y * mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute and self.training and torch.is_grad_enabled():
            # Non-reentrant checkpointing saves and restores the CPU (and CUDA) RNG state, so
            # dropout masks match between the forward and the recomputation.
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class Embedding(nn.Module):
    """Vocab-parallel word embeddings (+ learned positions); also computes tied logits."""

    def __init__(self, spec: GPTSpec, config: ModelParallelConfig):
        super().__init__()
        self.spec = spec
        self.split = sequence_parallel(spec)
        self.word_embeddings = mtp.VocabParallelEmbedding(
            spec.vocab_size,
            spec.hidden_size,
            init_method=normal_init(spec.embedding_init_std, spec.seed, "word_embeddings"),
            config=config,
        )
        if spec.position_embedding == "learned":
            self.position_embeddings = nn.Embedding(spec.max_position_embeddings, spec.hidden_size)
            normal_init(spec.init_method_std, spec.seed, "position_embeddings")(
                self.position_embeddings.weight
            )
        # A weightless column-parallel matmul: tied logits = hidden @ word_embeddings.T, with
        # megatron-core handling the TP gradient all-reduce of the input.
        self.tied_head = without_empty_extra_state(
            mtp.ColumnParallelLinear(
                spec.hidden_size,
                spec.vocab_size,
                config=config,
                init_method=lambda w: w,
                bias=False,
                gather_output=False,
                skip_weight_param_allocation=True,
            )
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(tokens)
        if self.spec.position_embedding == "learned":  # global positions under Ulysses
            start = ulysses.position_offset(tokens.shape[1])
            x = x + self.position_embeddings(torch.arange(start, start + tokens.shape[1], device=tokens.device))
        if self.spec.embedding_mult != 1.0:  # muP alpha_in
            x = x * self.spec.embedding_mult
        if self.split:  # [b, s, h] -> this rank's [s / tp, b, h]
            x = sp.scatter_to_sequence(x.transpose(0, 1))
        p = self.spec.hidden_dropout if self.training else 0.0
        return sp.dropout(x, p) if self.split else F.dropout(x, p)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocab-parallel logits ``[b, s, V / tp]`` with the embedding weight."""
        if self.split:
            return head_logits(hidden, self.word_embeddings.weight)
        out, _ = self.tied_head(hidden, weight=self.word_embeddings.weight)
        return out


class FinalNorm(nn.Module):
    """The norm after the last transformer layer."""

    def __init__(self, spec: GPTSpec):
        super().__init__()
        self.final_layernorm = build_norm(spec)
        self.logit_mult = spec.logit_mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.final_layernorm(x)
        # muP alpha_out/m_N scales the head's input, not its weight, so a tied head (which shares
        # the embedding weight) and an untied head get the same multiplier, on every TP rank and
        # on the last pipeline stage alike.
        return h if self.logit_mult == 1.0 else h * self.logit_mult


def head_input(hidden: torch.Tensor) -> torch.Tensor:
    """Sequence shards ``[s / tp, b, h]`` -> the full ``[b, s, h]`` on every TP rank; backward
    reduce-scatters the head's partial input gradients (no separate all-reduce)."""
    return sp.gather_from_sequence(hidden).transpose(0, 1)


def head_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Vocab-parallel logits ``[b, s, V / tp]`` of sequence-parallel hidden states (backward
    keeps this rank's shard of ``hidden``, not the gathered sequence)."""
    return sp.gathered_logits(hidden, weight)


class OutputLayer(nn.Module):
    """Untied output head: column-parallel ``[V / tp, d]`` weight."""

    def __init__(self, spec: GPTSpec, config: ModelParallelConfig):
        super().__init__()
        self.split = sequence_parallel(spec)
        self.output_layer = without_empty_extra_state(
            mtp.ColumnParallelLinear(
                spec.hidden_size,
                spec.vocab_size,
                config=config,
                init_method=normal_init(spec.init_method_std, spec.seed, "output_layer"),
                bias=False,
                gather_output=False,
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split:
            return head_logits(x, self.output_layer.weight)
        out, _ = self.output_layer(x)
        return out
