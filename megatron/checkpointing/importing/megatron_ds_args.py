"""A Megatron-DeepSpeed run's saved ``args`` in our terms: the model shape, our flags, the
tokenizer, and the refusals of what our model cannot represent.

The fork saves its ``argparse.Namespace`` in every ``mp_rank_XX_model_states.pt``. The values
read here are the ones that fix the weights' meaning (see ``docs/import_megatron_deepspeed.md``);
anything that changes the forward pass in a way our GPT does not implement (MoE, partial
rotary, LayerNorm-1p, post-LN residuals, tanh or squared-ReLU activations) is refused naming the
file and the key, before any tensor is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from megatron.checkpointing.importing.source import TokenizerSource
from megatron.checkpointing.metadata import CheckpointError
from megatron.model.spec import GPTSpec

# Their --tokenizer-type -> ours, and the file a local copy must provide.
TOKENIZER_TYPES: dict[str, tuple[str, str]] = {
    "Llama2Tokenizer": ("sentencepiece", "tokenizer.model"),
    "SentencePieceTokenizer": ("sentencepiece", "tokenizer.model"),
    "GPTSentencePieceTokenizer": ("sentencepiece", "tokenizer.model"),
    "HFTokenizer": ("hf", "tokenizer.json"),
    "NullTokenizer": ("null", ""),
}


@dataclass(frozen=True, slots=True)
class ForkArgs:
    """The saved ``args`` (a plain dict of the Namespace) and the file they came from."""

    values: dict[str, Any]
    file: str

    def get(self, key: str, default: Any = None) -> Any:
        """``args.key``, or ``default`` when the run predates the key."""
        value = self.values.get(key, default)
        return default if value is None else value

    def require(self, key: str) -> Any:
        """``args.key``, which the shape needs.

        Raises:
            CheckpointError: Missing.
        """
        if self.values.get(key) is None:
            raise CheckpointError(f"{self.file}: args.{key} is missing; cannot tell the model's shape")
        return self.values[key]

    def refuse(self, key: str, why: str) -> CheckpointError:
        """The error for ``args.key`` that has no faithful mapping."""
        return CheckpointError(f"{self.file}: args.{key}={self.values.get(key)!r}: {why}; not importable")


def fork_args(state: dict[str, Any], file: str) -> ForkArgs:
    """The ``args`` of one of their model-state files.

    Raises:
        CheckpointError: No ``args``, or a checkpoint format older than 2.0 (another QKV order).
    """
    args = state.get("args")
    if args is None or not hasattr(args, "__dict__"):
        raise CheckpointError(f"{file}: no saved 'args' (argparse.Namespace); this is not a "
                              "Megatron-DeepSpeed checkpoint, or one saved without its arguments")
    version = state.get("checkpoint_version", 0)
    if version < 2.0:
        raise CheckpointError(f"{file}: checkpoint_version={version}: fused QKV rows of versions "
                              "before 2.0 are ordered differently; load and re-save it with the fork first")
    return ForkArgs(dict(vars(args)), file)


def check_supported(a: ForkArgs) -> None:
    """Refuse every option our GPT does not implement.

    Raises:
        CheckpointError: Names the file and the key.
    """
    experts = a.get("num_experts", [1])
    if any(n > 1 for n in (experts if isinstance(experts, list) else [experts])):
        raise a.refuse("num_experts", "mixture-of-experts layers have no counterpart in our GPT")
    rope = a.get("use_rotary_position_embeddings", False)
    if rope and a.get("rotary_percent", 1.0) != 1.0:
        raise a.refuse("rotary_percent", "our RoPE rotates the whole head")
    if not rope and not a.get("add_position_embedding", True):
        raise a.refuse("add_position_embedding", "a model without position information")
    if a.get("normalization", "layernorm") not in ("layernorm", "rmsnorm"):
        raise a.refuse("normalization", "only layernorm and rmsnorm exist here")
    for key, why in (
        ("apply_layernorm_1p", "zero-centred LayerNorm weights"),
        ("apply_residual_connection_post_layernorm", "post-LayerNorm residuals"),
        ("openai_gelu", "our GeLU is the exact (erf) one"),
        ("onnx_safe", "our GeLU is the exact (erf) one"),
        ("squared_relu", "squared-ReLU activation"),
        ("num_layers_per_virtual_pipeline_stage", "interleaved (virtual) pipeline stages"),
    ):
        if a.get(key, False):
            raise a.refuse(key, why)


def fork_spec(a: ForkArgs) -> GPTSpec:
    """Our model shape of the fork's run (the vocabulary padded exactly as theirs)."""
    check_supported(a)
    heads = int(a.require("num_attention_heads"))
    hidden = int(a.require("hidden_size"))
    padded = int(a.require("padded_vocab_size"))
    seq = int(a.get("seq_length", a.require("max_position_embeddings")))
    return GPTSpec(
        num_layers=int(a.require("num_layers")),
        hidden_size=hidden,
        ffn_hidden_size=int(a.require("ffn_hidden_size")),
        num_attention_heads=heads,
        num_key_value_heads=int(a.get("num_key_value_heads", heads)),
        head_dim=int(a.get("kv_channels", hidden // heads)),
        vocab_size=padded,
        original_vocab_size=padded,
        seq_length=seq,
        max_position_embeddings=int(a.get("max_position_embeddings", seq)),
        position_embedding="rope" if a.get("use_rotary_position_embeddings", False) else "learned",
        rotary_base=float(a.get("rope_theta", 10000)),
        normalization=a.get("normalization", "layernorm"),
        norm_epsilon=float(a.get("layernorm_epsilon", 1e-5)),
        swiglu=bool(a.get("swiglu", False)),
        bias=bool(a.get("add_bias_linear", True)),
        tie_embeddings=not a.get("untie_embeddings_and_output_weights", False),
    )


def vocab_multiple(a: ForkArgs) -> int:
    """Their vocabulary padding multiple: ``make_vocab_size_divisible_by`` times their TP size
    (ours does not depend on TP, so this one value reproduces their padded rows for the same
    tokenizer)."""
    return int(a.get("make_vocab_size_divisible_by", 128)) * int(a.get("tensor_model_parallel_size", 1))


def model_flags(spec: GPTSpec, a: ForkArgs, tokenizer: TokenizerSource) -> dict[str, Any]:
    """Our ``run_metadata.json`` ``"config"`` (flag -> value) for the fork's model."""
    flags: dict[str, Any] = {
        "--num-layers": spec.num_layers,
        "--hidden-size": spec.hidden_size,
        "--ffn-hidden-size": spec.ffn_hidden_size,
        "--num-attention-heads": spec.num_attention_heads,
        "--num-key-value-heads": spec.num_key_value_heads,
        "--kv-channels": spec.head_dim,
        "--seq-length": spec.seq_length,
        "--max-position-embeddings": spec.max_position_embeddings,
        "--use-rotary-position-embeddings": spec.position_embedding == "rope",
        "--rotary-base": spec.rotary_base,
        "--normalization": spec.normalization,
        "--norm-epsilon": spec.norm_epsilon,
        "--swiglu": spec.swiglu,
        "--disable-bias-linear": not spec.bias,
        "--untie-embeddings-and-output-weights": not spec.tie_embeddings,
        "--make-vocab-size-divisible-by": vocab_multiple(a),
    }
    if tokenizer.tokenizer_type is not None:
        flags["--tokenizer-type"] = tokenizer.tokenizer_type
    if tokenizer.files:
        flags["--tokenizer-model"] = tokenizer.files[0]
    return flags


def fork_tokenizer(a: ForkArgs, local: str | None) -> TokenizerSource:
    """Their tokenizer: its name (``args.tokenizer_model``, often a hub id) and, when ``local``
    names a copy (a file, or a directory holding the expected file), that file.

    Raises:
        CheckpointError: An unknown tokenizer type with a local copy, or a copy that lacks the file.
    """
    kind = a.get("tokenizer_type")
    name = a.get("tokenizer_model") or a.get("vocab_file")
    ours, expected = TOKENIZER_TYPES.get(kind, (None, ""))
    if local is None and ours is not None and expected and name and os.path.exists(name):
        local = name  # the run's tokenizer path exists here too
    if local is None:
        return TokenizerSource(tokenizer_type=ours, name=name)
    if ours is None or not expected:
        raise CheckpointError(f"--tokenizer-model: {a.file} uses args.tokenizer_type={kind!r}, which has no "
                              f"local-file counterpart here (known: {sorted(TOKENIZER_TYPES)})")
    path = os.path.join(local, expected) if os.path.isdir(local) else local
    if ours == "hf" and os.path.isdir(local) and not os.path.isfile(path):
        path = os.path.join(local, "tokenizer.model")  # a hub directory with only the SentencePiece file
    if path.endswith(".model"):
        ours = "sentencepiece"
    if not os.path.isfile(path):
        raise CheckpointError(f"--tokenizer-model: {local} holds no {expected} (the {kind} the "
                              f"checkpoint names as {name!r})")
    return TokenizerSource(tokenizer_type=ours, files=(os.path.abspath(path),), name=name)
