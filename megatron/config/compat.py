"""Megatron-LM / Megatron-DeepSpeed command lines, accepted as their users already type them.

Every such flag is one entry of a registry, and nothing is silently ignored:

- **implemented**: one of our knobs under the same name (``compat_table.MEGATRON_FLAGS``,
  checked against the schema by a test);
- **alias of**: one of our knobs under another spelling (a knob alias or a value alias, e.g.
  ``--tokenizer-type GPT2BPETokenizer``);
- **mapped**: rewritten into our flags before parsing (``--data-path 0.3 A 0.7 B``);
- **no-op**: accepted, with the reason it changes nothing here (kernel-fusion switches);
- **refused**: an error at start with the reason and the fix.

``translate_argv`` applies the registry to a command line (``megatron.config.cli.parse_args``
calls it once, before argparse); ``compat_table.py`` renders the compatibility table (docs/megatron_compat.md)
from the same registry, so the table cannot drift from the code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from megatron.config.compat_registry import (
    COMPAT,
    REFUSED_VALUES,
    VALUE_ALIASES,
    CompatEntry,
    mapped,
    no_op,
    refuse,
)
from megatron.config.fields import ConfigError

log = logging.getLogger(__name__)

INLINE_DATA_LIST = "inline:"
"""Prefix of a data file list given inline (lines separated by ``;``), as ``--data-path`` maps."""


def _flag_and_value(token: str) -> tuple[str, str | None]:
    name, sep, value = token.partition("=")
    return name, (value if sep else None)


def _values(entry: CompatEntry, inline: str | None, rest: Sequence[str]) -> tuple[list[str], int]:
    """The values ``entry`` takes from ``inline`` (``--flag=value``) or the tokens after it."""
    if inline is not None:
        if entry.nargs == 0:
            raise ConfigError(f"{entry.flag}: takes no value, got {inline!r}")
        return inline.split() if entry.nargs == "*" else [inline], 0
    if entry.nargs == "*":
        taken = 0
        while taken < len(rest) and not rest[taken].startswith("--"):
            taken += 1
        return list(rest[:taken]), taken
    if len(rest) < entry.nargs or any(r.startswith("--") for r in rest[: entry.nargs]):
        raise ConfigError(f"{entry.flag}: expected {entry.nargs} value(s)")
    return list(rest[: entry.nargs]), entry.nargs


def translate_argv(argv: Sequence[str]) -> list[str]:
    """Rewrite foreign flags into ours (flags already in dashed spelling).

    Raises:
        ConfigError: A refused flag (with the reason), or a mapped flag with bad values.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        name, inline = _flag_and_value(argv[i])
        entry = COMPAT.get(name)
        if entry is None:
            taken = _copy_with_value_alias(name, inline, argv[i + 1 :], out)
            i += 1 + taken
            continue
        values, taken = _values(entry, inline, argv[i + 1 :])
        i += 1 + taken
        if entry.status == "refused" or entry.translate is None:
            raise ConfigError(f"{entry.flag}: not supported: {entry.note}")
        ours = entry.translate(values, list(argv))
        log.info(
            "%s %s -> %s (%s: %s)",
            entry.flag,
            " ".join(values),
            " ".join(ours) or "nothing",
            entry.status,
            entry.note,
        )
        out += ours
    return _infer_tokenizer(out)


def _copy_with_value_alias(
    name: str, inline: str | None, rest: Sequence[str], out: list[str]
) -> int:
    """Copy one of our flags to ``out``, replacing a Megatron value name (``GPT2BPETokenizer``);
    returns how many tokens after the flag were consumed."""
    refused = REFUSED_VALUES.get(name, {})
    value = inline if inline is not None else (rest[0] if rest else None)
    if value in refused:
        raise ConfigError(f"{name} {value}: not supported: {refused[value]}")
    table = VALUE_ALIASES.get(name)
    if table is None:
        out.append(name if inline is None else f"{name}={inline}")
        return 0
    if inline is not None:
        out.append(f"{name}={table.get(inline, inline)}")
        return 0
    if not rest:
        out.append(name)
        return 0
    out += [name, table.get(rest[0], rest[0])]
    return 1


def _infer_tokenizer(argv: list[str]) -> list[str]:
    """``--vocab-file V --merge-file M`` without a tokenizer is Megatron's GPT2BPETokenizer.

    Only when neither ``--tokenizer-type`` nor a ``--config`` file (which may name one) is given;
    otherwise ``DataConfig`` refuses vocabulary files that the chosen tokenizer does not read.
    """
    names = {_flag_and_value(t)[0] for t in argv if t.startswith("--")}
    if {"--vocab-file", "--merge-file"} <= names and not names & {"--tokenizer-type", "--config"}:
        log.info("--vocab-file/--merge-file without --tokenizer-type: GPT-2 BPE (gpt2bpe)")
        return [*argv, "--tokenizer-type", "gpt2bpe"]
    return argv


# ---- mapped -------------------------------------------------------------------------------


def inline_data_list(values: Sequence[str], flag: str) -> str:
    """Megatron's ``w1 prefix1 w2 prefix2 ...`` (or one prefix) as an inline data file list.

    Each prefix becomes its own corpus, named after its file.

    Raises:
        ConfigError: An odd number of tokens or a weight that is not a number.
    """
    if not values:
        raise ConfigError(f"{flag}: expected a prefix or 'weight prefix' pairs")
    if len(values) == 1:
        pairs = [("1", values[0])]
    elif len(values) % 2:
        raise ConfigError(f"{flag}: expected 'weight prefix' pairs, got {len(values)} values")
    else:
        pairs = list(zip(values[::2], values[1::2], strict=True))
    lines = []
    for weight, prefix in pairs:
        try:
            float(weight)
        except ValueError:
            raise ConfigError(
                f"{flag}: weight {weight!r} (before {prefix}) is not a number"
            ) from None
        corpus = os.path.basename(prefix.removesuffix(".bin")) or "data"
        lines.append(f"{weight} {prefix} {corpus}")
    return INLINE_DATA_LIST + ";".join(lines)


def _whole_lists(argv: list[str]) -> list[str]:
    """Megatron ignores --split when the splits have their own paths; so do we."""
    names = {_flag_and_value(t)[0] for t in argv}
    return [] if "--split" in names else ["--split", "100,0,0"]


@mapped("--data-path", "--data-file-list (inline list, one corpus per prefix)", nargs="*")
def _data_path(values: list[str], argv: list[str]) -> list[str]:
    return ["--data-file-list", inline_data_list(values, "--data-path")]


for _split, _ours in (
    ("train", "data-file-list"),
    ("valid", "valid-data-file-list"),
    ("test", "test-data-file-list"),
):

    def _inline(
        values: list[str], argv: list[str], ours: str = _ours, split: str = _split
    ) -> list[str]:
        return ["--" + ours, inline_data_list(values, f"--{split}-data-path"), *_whole_lists(argv)]

    def _file(values: list[str], argv: list[str], ours: str = _ours) -> list[str]:
        return ["--" + ours, values[0], *_whole_lists(argv)]

    mapped(
        f"--{_split}-data-path", f"--{_ours} (inline list; --split 100,0,0 unless given)", nargs="*"
    )(_inline)
    mapped(
        f"--{_split}-data-path-file",
        f"--{_ours} (our data file list format; --split 100,0,0 unless given)",
    )(_file)


@mapped(
    "--position-embedding-type",
    "--use-rotary-position-embeddings (rope) or "
    "--no-use-rotary-position-embeddings (learned_absolute); other types refused",
)
def _position_embedding_type(values: list[str], argv: list[str]) -> list[str]:
    choice = {
        "rope": "--use-rotary-position-embeddings",
        "learned_absolute": "--no-use-rotary-position-embeddings",
    }.get(values[0])
    if choice is None:
        raise ConfigError(
            f"--position-embedding-type: {values[0]!r} is not supported; use rope "
            "or learned_absolute"
        )
    return [choice]


@mapped(
    "--data-impl", "no-op for mmap (our indexed datasets are memory-mapped); other values refused"
)
def _data_impl(values: list[str], argv: list[str]) -> list[str]:
    if values[0] != "mmap":
        raise ConfigError(
            f"--data-impl: {values[0]!r} is not supported: datasets are read "
            "memory-mapped (mmap); re-tokenize with tools/preprocess_data.py"
        )
    return []


@mapped("--no-pipeline-parallel", "--pipeline-model-parallel-size 1", nargs=0)
def _no_pipeline(values: list[str], argv: list[str]) -> list[str]:
    return ["--pipeline-model-parallel-size", "1"]


# ---- no-ops -------------------------------------------------------------------------------

no_op("--deepspeed", "DeepSpeed is always used")
no_op("--log-validation-ppl-to-tensorboard", "always on: valid/ppl and test/ppl are written")
no_op("--log-learning-rate-to-tensorboard", "always on: train/lr is written")
no_op("--log-throughput", "always on: tokens/s, samples/s and TFLOP/s are logged")
_FUSION = (
    "attention runs in torch SDPA and the other ops are plain torch; no fused kernel to switch"
)
for _flag in (
    "--no-masked-softmax-fusion",
    "--no-bias-gelu-fusion",
    "--no-bias-dropout-fusion",
    "--no-bias-swiglu-fusion",
    "--no-rope-fusion",
    "--no-persist-layer-norm",
    "--masked-softmax-fusion",
    "--bias-gelu-fusion",
    "--bias-dropout-fusion",
):
    no_op(_flag, _FUSION)
no_op(
    "--no-gradient-accumulation-fusion",
    "weight gradients accumulate through autograd; there is no fused (APEX/TE) wgrad kernel",
)
no_op(
    "--no-async-tensor-model-parallel-allreduce",
    "megatron-core's TP layers run without the async all-reduce overlap here",
)
no_op(
    "--apply-query-key-layer-scaling",
    "SDPA scales by 1/sqrt(head dim) inside the kernel; the "
    "layer-number rescaling only guarded Megatron's fp16 fused softmax",
)
no_op("--no-query-key-layer-scaling", "SDPA scales by 1/sqrt(head dim) inside the kernel")
no_op("--attention-softmax-in-fp32", "SDPA's fused kernels accumulate the softmax in fp32")
no_op(
    "--deepspeed-activation-checkpointing",
    "--recompute-activations uses torch checkpointing; "
    "DeepSpeed's implementation would recompute the same activations",
)
no_op("--num-workers", "samples are read memory-mapped in the training process", nargs=1)
no_op(
    "--use-cpu-initialization",
    "weights are initialized from per-tensor seeds, identical on any device",
)

# ---- refused ------------------------------------------------------------------------------

refuse(
    "--use-distributed-optimizer",
    "Megatron's distributed optimizer is ZeRO-1 here; use --zero-stage 1",
)
refuse(
    "--rampup-batch-size",
    "batch-size ramp-up is not implemented; use a fixed --global-batch-size",
    nargs="*",
)
refuse("--fp8-format", "FP8 (Transformer Engine) training is not implemented; use --bf16", nargs=1)
refuse("--moe-expert-parallel-size", "mixture-of-experts models are not implemented", nargs=1)
refuse("--num-experts", "mixture-of-experts models are not implemented", nargs="*")

# The argonne fork's and TiC-LM's own spellings (registered into the same tables).
import megatron.config.compat_peers  # noqa: E402,F401
