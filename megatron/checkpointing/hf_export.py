"""Export a checkpoint of ours to a Hugging Face ``transformers`` model directory.

``export_hf`` picks the target class from the model's shape (the registry in ``hf_arch`` /
``hf_targets``: Llama, GPT-NeoX, Starcoder2, GPT-2; a model none represents exactly is refused
naming the flags), streams the tensors one by one from the (memory-mapped) checkpoint into
safetensors shards (``hf_shards``), and adds ``config.json``, ``generation_config.json`` and the
run's tokenizer (``hf_tokenizer``). The source is a ``SAVE`` directory (its ``latest``), a
``SAVE/global_stepN`` of any TP/PP/DP/ZeRO layout, or a universal checkpoint.

The embedding (and untied head) are trimmed from the padded ``vocab_size`` rows to the
tokenizer's ``original_vocab_size``: padded rows are never real tokens, so the logits of every
real token are unchanged. Transformers is not needed to export, only to load the result.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any

import torch

import megatron.checkpointing.hf_targets  # noqa: F401  (registers the export targets)
from megatron.checkpointing.checkpoint import CheckpointError
from megatron.checkpointing.convert import step_dir
from megatron.checkpointing.hf_arch import EXPORTERS, select_exporter
from megatron.checkpointing.hf_shards import Progress, parse_size, peak_rss_bytes, write_shards
from megatron.checkpointing.hf_tokenizer import write_tokenizer
from megatron.checkpointing.reader import WEIGHT, SavedCheckpoint
from megatron.checkpointing.universal import UniversalCheckpoint, is_universal
from megatron.config.fields import ConfigError
from megatron.model.spec import GPTSpec

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEFAULT_MAX_SHARD_SIZE = "5GB"
"""``save_pretrained``'s default."""


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


def imported_architecture(metadata: dict[str, Any], spec: GPTSpec) -> str | None:
    """The export target of the class a model was imported from (``tools/import_checkpoint.py``),
    when it still represents the model; None otherwise (the first target that fits is used)."""
    name = (metadata.get("import") or {}).get("architecture")
    return name if name in EXPORTERS and not EXPORTERS[name].problems(spec) else None


def check_llama_shaped(spec: GPTSpec) -> None:
    """Refuse a model that ``LlamaForCausalLM`` cannot represent (naming the flags)."""
    select_exporter(spec, "llama")


def dtype_name(dtype: str) -> str:
    """The canonical dtype name of ``dtype`` (``bf16`` -> ``bfloat16``).

    Raises:
        ConfigError: Unknown dtype.
    """
    name = DTYPE_ALIASES.get(dtype, dtype)
    if name not in DTYPES:
        raise ConfigError(f"--dtype: unknown dtype {dtype!r}; known: {sorted([*DTYPES, *DTYPE_ALIASES])}")
    return name


class _LastTensor:
    """``get(name)`` of full fp32 weights, remembering the last one: q/k/v and gate/up are read
    from one fused tensor in a row, which is then loaded (and TP-merged) once."""

    def __init__(self, ckpt: SavedCheckpoint | UniversalCheckpoint):
        self.ckpt = ckpt
        self.name: str | None = None
        self.value: torch.Tensor | None = None

    def __call__(self, name: str) -> torch.Tensor:
        if name != self.name:
            self.name, self.value = None, None  # drop the previous tensor before reading the next
            self.value, self.name = self.ckpt.full(name, WEIGHT), name
        return self.value


def export_config(exporter_config: dict[str, Any], dtype: str, eos: int | None) -> dict[str, Any]:
    """``config.json``: the target's fields plus dtype and token ids."""
    return {**exporter_config, "torch_dtype": dtype, "dtype": dtype, "bos_token_id": None,
            "eos_token_id": eos, "pad_token_id": None}


def export_hf(source: str, output: str, *, architecture: str | None = None, dtype: str = "float32",
              max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE, progress: Progress | None = None,
              tokenizer: bool = True) -> dict[str, Any]:
    """Write checkpoint ``source`` as a Hugging Face model directory ``output``.

    Args:
        source: ``SAVE`` (its ``latest``), ``SAVE/global_stepN`` or a universal checkpoint.
        output: Target directory; must not exist. Written under a temporary name and renamed
            when complete, so a failed export leaves nothing behind.
        architecture: A registered target (``llama``, ``gpt_neox``, ...); default: the first that
            represents the model exactly (an imported model: the class it came from).
        dtype: ``float32``/``fp32``, ``bfloat16``/``bf16`` or ``float16``/``fp16``.
        max_shard_size: Largest safetensors file (``"5GB"``, ``"500MB"``, bytes).
        progress: Called after each tensor with (bytes done, bytes total, name).
        tokenizer: Also export the run's tokenizer.

    Returns:
        ``{"output", "architecture", "hf_class", "parameters", "dtype", "vocab_size",
        "tokenizer", "files", "bytes", "seconds", "peak_rss_bytes"}``.

    Raises:
        ConfigError: Unknown dtype/architecture, bad shard size, or a model no target represents.
        CheckpointError: Unreadable source or existing output.
    """
    start = time.perf_counter()
    dtype = dtype_name(dtype)
    max_bytes = parse_size(max_shard_size)
    if os.path.exists(output):
        raise CheckpointError(f"--output: {output} exists; remove it or choose another directory")
    ckpt = open_checkpoint(source)
    spec = ckpt.spec
    exporter = select_exporter(spec, architecture or imported_architecture(ckpt.metadata, spec))
    tensors = list(exporter.tensors(_LastTensor(ckpt), spec))
    tmp = f"{output.rstrip('/')}.tmp-{os.getpid()}"
    try:
        os.makedirs(tmp)
        kind, eos = (None, None)
        if tokenizer:
            kind, eos = write_tokenizer(ckpt.metadata.get("tokenizer") or {}, tmp, spec.seq_length,
                                        spec.original_vocab_size)
        report = write_shards(tensors, tmp, DTYPES[dtype], max_bytes, progress)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(export_config(exporter.config(spec), dtype, eos), f, indent=2)
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump({"do_sample": False, "eos_token_id": eos, "bos_token_id": None}, f, indent=2)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {
        "output": output, "architecture": exporter.name, "hf_class": exporter.hf_class,
        "parameters": report.parameters, "dtype": dtype, "vocab_size": spec.original_vocab_size,
        "tokenizer": kind, "files": report.files, "bytes": report.bytes,
        "seconds": time.perf_counter() - start, "peak_rss_bytes": peak_rss_bytes(),
    }
    log.info("hf export: %s -> %s (%s, %d parameters, %s, %d file(s))", source, output,
             exporter.hf_class, report.parameters, dtype, len(report.files))
    return summary


def export_llama(source: str, output: str, dtype: str = "float32") -> dict[str, Any]:
    """``export_hf`` forced to ``LlamaForCausalLM`` (refuses other shapes, naming the flags)."""
    return export_hf(source, output, architecture="llama", dtype=dtype)


__all__ = ["DTYPES", "EXPORTERS", "check_llama_shaped", "export_hf", "export_llama", "open_checkpoint"]
