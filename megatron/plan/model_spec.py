"""The model shape of a config (``GPTSpec``) and the tokenizer vocabulary it is padded from.

Part of the run plan (``resolve``); also used alone where a checkpoint's shape is rebuilt from
its stored flags. Torch-free.
"""

from __future__ import annotations

from megatron.config.fields import ConfigError
from megatron.config.root import Config
from megatron.data.tokenizers import build_tokenizer
from megatron.model.spec import GPTSpec, pad_vocab_size
from megatron.objectives.registry import ObjectiveSpec, get_objective
from megatron.scaling.recipes import Scaling, derive_scaling


def tokenizer_vocab_size(cfg: Config) -> int:
    """The tokenizer's vocabulary (``--vocab-size`` with ``--mock-data``), before padding."""
    if cfg.data.mock_data and cfg.data.vocab_size:
        return cfg.data.vocab_size

    try:
        return build_tokenizer(cfg.data).vocab_size
    except ConfigError:
        raise
    except (OSError, ValueError) as e:
        raise ConfigError(f"--tokenizer-model: cannot load the tokenizer: {e}") from None


def lookup_objective(cfg: Config) -> ObjectiveSpec:
    """The registered ``--objective`` entry (torch-free); ``resolve`` keeps it in the plan."""
    return get_objective(cfg.objective.objective)


def build_model_spec(
    cfg: Config, vocab_size: int, tp: int, scaling: Scaling | None = None,
    objective: ObjectiveSpec | None = None,
) -> GPTSpec:
    """The model shape of ``cfg`` for a tokenizer of ``vocab_size`` ids (``scaling``: the
    recipe's multipliers, ``objective``: the ``--objective`` entry; each looked up from ``cfg``
    when not given)."""
    m = cfg.model
    objective = objective or lookup_objective(cfg)
    scaling = scaling or derive_scaling(cfg.scaling, m.hidden_size, m.num_layers)
    hidden_std, out_std = scaling.init_stds(m.init_std, m.num_layers)
    padded = pad_vocab_size(vocab_size, m.make_vocab_size_divisible_by)
    if padded % tp:
        raise ConfigError(
            f"--make-vocab-size-divisible-by: {m.make_vocab_size_divisible_by} must be a "
            f"multiple of --tensor-model-parallel-size {tp}"
        )
    return GPTSpec(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_size,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.kv_heads,
        head_dim=m.head_dim,
        vocab_size=padded,
        original_vocab_size=vocab_size,
        seq_length=m.seq_length,
        max_position_embeddings=m.positions,
        position_embedding="rope" if m.use_rotary_position_embeddings else "learned",
        rotary_base=m.rotary_base,
        normalization=m.normalization,
        norm_epsilon=m.norm_epsilon,
        swiglu=m.swiglu,
        bias=not m.disable_bias_linear,
        tie_embeddings=not m.untie_embeddings_and_output_weights,
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        init_method_std=m.init_std,
        output_init_std=out_std,
        embedding_init_std=m.word_embedding_init_std or m.init_std,
        recompute=m.recompute == "full",
        recompute_selective=m.recompute == "selective",
        recompute_method=m.recompute_method or "uniform",
        recompute_num_layers=m.recompute_num_layers
        or (m.num_layers if m.recompute_method == "block" else 1),
        causal=objective.causal,
        seed=cfg.train.seed,
        hidden_init_std=None if hidden_std == m.init_std else hidden_std,
        embedding_mult=scaling.embedding_mult,
        logit_mult=scaling.logit_mult,
        residual_mult=scaling.residual_mult,
        attention_scale=scaling.attention_scale(m.head_dim),
        fused_ce_chunk_tokens=m.fused_ce_chunk_tokens if m.fused_linear_cross_entropy else 0,
        rotary_percent=m.rotary_percent,
        add_qkv_bias=m.add_qkv_bias,
        rope_scaling_factor=m.rope_scaling_factor if m.use_rope_scaling else 1.0,
        rotary_interpolation=m.rotary_seq_len_interpolation_factor or 1.0,
        parallel_residual=m.use_parallel_residual,
        openai_gelu=m.openai_gelu,
        qk_layernorm=m.qk_layernorm,
        qk_layernorm_scope=m.qk_layernorm_scope,
        norm_placement=m.norm_placement,
        sequence_parallel=cfg.parallel.sequence_parallel,
    )
