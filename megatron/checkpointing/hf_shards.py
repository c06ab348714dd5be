"""Stream export tensors into safetensors shards with the Hugging Face index.

The shard plan is made from shapes alone (``HFTensor.shape``), so the file names
``model-0000k-of-0000n.safetensors`` are known before any weight is read. Each shard's tensors
are then computed one by one from the (memory-mapped) checkpoint reader, converted to the target
dtype, written, and dropped: memory holds at most one shard plus the source tensor being read,
never the whole model twice. One shard is written as ``model.safetensors`` without an index
(what ``save_pretrained`` does); more get ``model.safetensors.index.json``
(``{"metadata": {"total_size"}, "weight_map": {name: file}}``).

Sizes follow ``save_pretrained``'s ``max_shard_size``: ``"5GB"`` is 5 * 10**9 bytes, ``"2GiB"``
2 * 2**30; a tensor larger than the limit gets a shard of its own.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron.checkpointing.hf_arch import HFTensor
from megatron.config.fields import ConfigError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}

Progress = Callable[[int, int, str], None]
"""``(bytes written, total bytes, tensor name)`` after each tensor."""


def parse_size(text: str | int) -> int:
    """Bytes of ``"500MB"``, ``"2GiB"``, ``"1e9"`` or an int.

    Raises:
        ConfigError: Unparseable or not positive, naming ``--max-shard-size``.
    """
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
        unit = match.group(2).upper() if match else None
        if match is None or unit not in UNITS:
            raise ConfigError(f"--max-shard-size: cannot read {text!r}; use e.g. 5GB, 500MB or 2GiB")
        value = int(float(match.group(1)) * UNITS[unit])
    if value <= 0:
        raise ConfigError(f"--max-shard-size: must be positive, got {text!r}")
    return value


def tensor_bytes(t: HFTensor, dtype: torch.dtype) -> int:
    """Bytes of ``t`` stored as ``dtype``."""
    return math.prod(t.shape) * torch.empty((), dtype=dtype).element_size()


def plan_shards(tensors: list[HFTensor], dtype: torch.dtype, max_bytes: int) -> list[list[HFTensor]]:
    """Consecutive groups of ``tensors`` of at most ``max_bytes`` each (an oversize tensor alone)."""
    shards: list[list[HFTensor]] = [[]]
    size = 0
    for t in tensors:
        n = tensor_bytes(t, dtype)
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += n
    return shards


def shard_names(count: int) -> list[str]:
    """HF file names of ``count`` shards."""
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


@dataclass(frozen=True, slots=True)
class ShardReport:
    """What ``write_shards`` wrote."""

    files: list[str]
    parameters: int
    bytes: int


def write_shards(tensors: list[HFTensor], directory: str, dtype: torch.dtype, max_bytes: int,
                 progress: Progress | None = None) -> ShardReport:
    """Write ``tensors`` as safetensors shards (and index) under ``directory``.

    Raises:
        ValueError: A computed tensor's shape differs from its planned shape (an exporter bug).
    """
    from safetensors.torch import save_file

    shards = plan_shards(tensors, dtype, max_bytes)
    names = shard_names(len(shards))
    total = sum(tensor_bytes(t, dtype) for t in tensors)
    done = 0
    weight_map: dict[str, str] = {}
    for shard, file in zip(shards, names, strict=True):
        data: dict[str, torch.Tensor] = {}
        for t in shard:
            # A fresh contiguous copy: safetensors refuses views that share storage (q/k/v, gate/up).
            value = t.load().to(dtype).contiguous().clone()
            if tuple(value.shape) != t.shape:
                raise ValueError(f"{t.name}: computed shape {tuple(value.shape)}, planned {t.shape}")
            data[t.name] = value
            weight_map[t.name] = file
            done += value.numel() * value.element_size()
            if progress is not None:
                progress(done, total, t.name)
        save_file(data, os.path.join(directory, file), metadata={"format": "pt"})
        del data
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        with open(os.path.join(directory, INDEX_FILE), "w") as f:
            json.dump(index, f, indent=2)
    return ShardReport(files=names, parameters=sum(math.prod(t.shape) for t in tensors), bytes=total)
