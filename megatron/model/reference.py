"""A plain-PyTorch reference of our Llama-style GPT, and a weight copy into it.

``PlainGPT`` is the model a user would write by hand in ``torch.nn``: one fused QKV ``nn.Linear``
(rows ``[q; k; v]``), rotate-half RoPE, ``scaled_dot_product_attention``, SwiGLU, RMSNorm, a
tied or untied head; no megatron-core, no DeepSpeed. It is the baseline of
``bench/gpu_throughput.py`` (eager and under ``torch.compile``) and, through
``copy_gpt_weights``, the oracle that proves our ``GPTModel`` computes the same function
(``tests/unit/model/test_reference.py`` in fp32 on CPU, ``tests/gpu/`` in bf16).

Only the Llama-style subset is covered (no biases, RoPE, no dropout or muP multipliers);
``check_reference_spec`` names what is outside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megatron.model.rope import apply_rope, rope_tables
from megatron.model.spec import GPTSpec


def check_reference_spec(spec: GPTSpec) -> None:
    """Refuse a model shape the plain reference does not implement.

    Raises:
        ValueError: Naming the first unsupported feature.
    """
    unsupported = {
        "biases (use --disable-bias-linear)": spec.bias,
        "learned positions (use RoPE)": spec.position_embedding != "rope",
        "a GeLU MLP (use --swiglu)": not spec.swiglu,
        "LayerNorm (use --normalization rmsnorm)": spec.normalization != "rmsnorm",
        "dropout": spec.hidden_dropout > 0 or spec.attention_dropout > 0,
        "query/key norms (--qk-layernorm)": spec.qk_layernorm,
        "output norms (--norm-placement output)": spec.norm_placement != "input",
        "muP/CompleteP multipliers": (spec.embedding_mult, spec.logit_mult, spec.residual_mult)
        != (1.0, 1.0, 1.0)
        or spec.attention_scale is not None,
    }
    for what, present in unsupported.items():
        if present:
            raise ValueError(f"the plain reference GPT has no {what}")


def _norm(spec: GPTSpec) -> nn.Module:
    return nn.RMSNorm(spec.hidden_size, eps=spec.norm_epsilon)


class PlainBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``+ swiglu(norm(.))``."""

    def __init__(self, spec: GPTSpec):
        super().__init__()
        self.spec = spec
        q_width = spec.num_attention_heads * spec.head_dim
        kv_width = spec.num_key_value_heads * spec.head_dim
        self.attn_norm = _norm(spec)
        self.qkv = nn.Linear(spec.hidden_size, q_width + 2 * kv_width, bias=False)
        self.proj = nn.Linear(q_width, spec.hidden_size, bias=False)
        self.mlp_norm = _norm(spec)
        self.gate_up = nn.Linear(spec.hidden_size, 2 * spec.ffn_hidden_size, bias=False)
        self.down = nn.Linear(spec.ffn_hidden_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        b, s, _ = x.shape
        heads, kv_heads, hd = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
        q, k, v = self.qkv(self.attn_norm(x)).split([heads * hd, kv_heads * hd, kv_heads * hd], -1)
        q, k, v = q.view(b, s, heads, hd), k.view(b, s, kv_heads, hd), v.view(b, s, kv_heads, hd)
        cos, sin = rope_tables(
            spec.max_position_embeddings, hd, spec.rotary_base, x.device, q.dtype
        )
        q, k = apply_rope(q, cos[:s], sin[:s]), apply_rope(k, cos[:s], sin[:s])
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=spec.causal,
            enable_gqa=heads != kv_heads,
        )
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, heads * hd))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class PlainGPT(nn.Module):
    """Embedding -> blocks -> norm -> head, in plain ``torch.nn``.

    ``forward(tokens)`` returns logits ``[b, s, V]``; ``forward(tokens, labels)`` the per-token
    fp32 cross-entropy ``[b, s]`` (as ``GPTModel`` does).

    Args:
        spec: The model shape (``check_reference_spec`` must accept it).
    """

    def __init__(self, spec: GPTSpec):
        super().__init__()
        check_reference_spec(spec)
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.blocks = nn.ModuleList(PlainBlock(spec) for _ in range(spec.num_layers))
        self.norm = _norm(spec)
        self.head = (
            None
            if spec.tie_embeddings
            else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        )
        with torch.no_grad():  # a GPT init; copy_gpt_weights replaces it where it matters
            for p in self.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, spec.init_method_std)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        logits = x @ self.embed.weight.t() if self.head is None else self.head(x)
        if labels is None:
            return logits
        flat = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
        return flat.view_as(labels)


def _qkv_rows(weight: torch.Tensor, spec: GPTSpec) -> torch.Tensor:
    """Our fused QKV rows, grouped per key/value head ``[q_1..q_r, k, v]`` per group, in the
    plain order ``[all q; all k; all v]``."""
    r = spec.num_attention_heads // spec.num_key_value_heads
    grouped = weight.view(spec.num_key_value_heads, r + 2, spec.head_dim, -1)
    q = grouped[:, :r].reshape(-1, weight.shape[-1])
    k = grouped[:, r].reshape(-1, weight.shape[-1])
    v = grouped[:, r + 1].reshape(-1, weight.shape[-1])
    return torch.cat([q, k, v])


def reference_state_dict(ours: dict[str, torch.Tensor], spec: GPTSpec) -> dict[str, torch.Tensor]:
    """``PlainGPT`` weights from the full (TP=1) state dict of our ``GPTModel``.

    Raises:
        ValueError: A missing tensor or a TP-sharded shape (copy from a TP=1 model).
    """
    expected_qkv = (spec.num_attention_heads + 2 * spec.num_key_value_heads) * spec.head_dim
    qkv = ours.get("layers.0.self_attention.query_key_value.weight")
    if qkv is None or qkv.shape[0] != expected_qkv:
        raise ValueError("copy_gpt_weights needs the full weights of a TP=1 GPTModel")
    out = {
        "embed.weight": ours["embedding.word_embeddings.weight"],
        "norm.weight": ours["final_norm.final_layernorm.weight"],
    }
    if not spec.tie_embeddings:
        out["head.weight"] = ours["output.output_layer.weight"]
    for i in range(spec.num_layers):
        src, dst = f"layers.{i}.", f"blocks.{i}."
        out[dst + "attn_norm.weight"] = ours[src + "input_layernorm.weight"]
        out[dst + "qkv.weight"] = _qkv_rows(
            ours[src + "self_attention.query_key_value.weight"], spec
        )
        out[dst + "proj.weight"] = ours[src + "self_attention.dense.weight"]
        out[dst + "mlp_norm.weight"] = ours[src + "post_attention_layernorm.weight"]
        # fc1 at TP=1 holds the logical [gate; up] rows, the plain order.
        out[dst + "gate_up.weight"] = ours[src + "mlp.dense_h_to_4h.weight"]
        out[dst + "down.weight"] = ours[src + "mlp.dense_4h_to_h.weight"]
    return out


@torch.no_grad()
def copy_gpt_weights(ours: nn.Module, plain: PlainGPT) -> PlainGPT:
    """Load the weights of our (TP=1) ``GPTModel`` into ``plain``, converted to its dtype.

    Every tensor of ``plain`` is written (a strict load), so a mapping gap is an error.
    """
    state = {k: v.detach() for k, v in ours.state_dict().items() if k.endswith("weight")}
    mapped = reference_state_dict(state, plain.spec)
    plain.load_state_dict(mapped, strict=True)
    return plain
