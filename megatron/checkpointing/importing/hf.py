"""The Hugging Face source: a local model directory written by ``save_pretrained`` (or the hub).

``open_hf(path)`` reads everything but the weights: ``config.json`` (the family in
``hf_models`` maps it to our flags or refuses it, naming the key), the weight files
(``model.safetensors``, sharded ``*.safetensors`` with ``model.safetensors.index.json``, or
``pytorch_model*.bin`` read with ``weights_only=True``: a pickle that needs arbitrary code is
refused, never run), every safetensors header (a truncated shard is refused), the presence of
every tensor the model needs, and the tokenizer (``tokenizer.json`` or ``tokenizer.model``).
Only then does the writer call the loaders, each of which reads the few HF tensors of one of
our parameters and combines them.

The vocabulary: HF models often have more embedding rows (``vocab_size``) than their tokenizer
has ids; the extra rows are padding. We keep every row: ``--make-vocab-size-divisible-by`` is
chosen so that our padding of the tokenizer's size gives exactly ``vocab_size`` rows.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import megatron.checkpointing.importing.hf_models  # noqa: F401  (registers the families)
from megatron.checkpointing.importing.hf_families import HF_FAMILIES, Config, HFFamily, Recipe
from megatron.checkpointing.importing.source import (
    SourceFormat,
    TensorLoader,
    TokenizerSource,
    register_source_format,
)
from megatron.checkpointing.metadata import CheckpointError
from megatron.config.fields import ConfigError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_FILE = "pytorch_model.bin"
TOKENIZER_FILES = (("tokenizer.json", "hf"), ("tokenizer.model", "sentencepiece"))
DEFAULT_SEQ_LENGTH = 2048


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"--input: cannot read {path}: {e}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"--input: {path} does not hold a JSON object")
    return value


def safetensors_names(path: str) -> list[str]:
    """Tensor names in a safetensors file's header, after checking the file holds all their bytes.

    Raises:
        CheckpointError: Unreadable header or a file shorter than its tensors (truncated).
    """
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                raise ValueError(f"header of {length} bytes in a {size}-byte file")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"--input: {path} is not a readable safetensors file ({e})") from None
    header.pop("__metadata__", None)
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if 8 + length + end > size:
        raise CheckpointError(f"--input: {path} is truncated: its header needs {8 + length + end} bytes, "
                              f"the file has {size}; download it again")
    return list(header)


def _load_bin(path: str) -> dict[str, Any]:
    import pickle

    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # A legacy (pre-zip) torch.save file cannot be memory-mapped: read it whole.
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"--input: {path} needs arbitrary unpickling, refused (nothing in it was "
                              f"run; convert it to safetensors from a trusted copy): {first}") from None
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"--input: cannot read {path}: {e}") from None


def _weight_map(path: str) -> tuple[dict[str, str], list[str]]:
    """``{tensor name: file}`` and the index files read."""
    for index, single in ((SAFETENSORS_INDEX, SAFETENSORS_FILE), (BIN_INDEX, BIN_FILE)):
        index_path = os.path.join(path, index)
        if os.path.isfile(index_path):
            weight_map = _read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"--input: {index_path} has no weight_map")
            for file in sorted(set(weight_map.values())):
                if not os.path.isfile(os.path.join(path, file)):
                    raise CheckpointError(f"--input: {index_path} names {file}, which is not in {path}")
            return {k: os.path.join(path, v) for k, v in weight_map.items()}, [index_path]
        if os.path.isfile(os.path.join(path, single)):
            return {"": os.path.join(path, single)}, []
    raise CheckpointError(f"--input: {path} holds no weights ({SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, "
                          f"{BIN_FILE} or {BIN_INDEX})")


def vocab_divisor(tokenizer_size: int, rows: int) -> int:
    """The ``--make-vocab-size-divisible-by`` that pads ``tokenizer_size`` to exactly ``rows``."""
    for m in (128, 64, 32, 16, 8, 4, 2, 1):
        if rows % m == 0 and -(-tokenizer_size // m) * m == rows:
            return m
    return rows


class HFSource:
    """An opened Hugging Face model directory (``ImportSource``).

    Raises:
        CheckpointError: Missing/unreadable files, a truncated shard, a missing tensor.
        ConfigError: A config value without a faithful mapping (names the key and value).
    """

    format = "hf"

    def __init__(self, path: str, **_options: Any):
        self.path = path
        config_path = os.path.join(path, CONFIG_FILE)
        if not os.path.isfile(config_path):
            raise CheckpointError(f"--input: {path} has no {CONFIG_FILE}; give a Hugging Face model directory")
        cfg = Config(_read_json(config_path), config_path)
        model_type = cfg.get("model_type")
        if model_type not in HF_FAMILIES:
            raise cfg.refuse("model_type", model_type, f"is not supported (supported: {sorted(HF_FAMILIES)})")
        self.family: HFFamily = HF_FAMILIES[model_type]
        self.architecture = self.family.architecture
        self.hf_class = self.family.hf_class
        flags = self.family.flags(cfg)
        self._limits = cfg.limits
        self._files = [config_path]
        self._tokenizer, size = self._find_tokenizer()
        rows = int(cfg.need("vocab_size"))
        if size is not None and size > rows:
            raise cfg.refuse("vocab_size", rows, f"is smaller than the tokenizer's {size} ids "
                             f"({self._tokenizer.files[0]})")
        size = rows if size is None else size
        self._flags = {
            **flags,
            "--seq-length": min(flags["--max-position-embeddings"], DEFAULT_SEQ_LENGTH),
            "--vocab-size": size,
            "--make-vocab-size-divisible-by": vocab_divisor(size, rows),
        }
        self._locate = self._index_weights()
        self._recipes = self.family.tensors(self._flags)
        self._sources = {r.name: [self._resolve(n) for n in r.hf_names] for r in self._recipes}

    def _find_tokenizer(self) -> tuple[TokenizerSource, int | None]:
        from megatron.data.tokenizers import build_tokenizer

        for name, kind in TOKENIZER_FILES:
            file = os.path.join(self.path, name)
            if os.path.isfile(file):
                settings = SimpleNamespace(tokenizer_type=kind, tokenizer_model=file, vocab_file=None,
                                           merge_file=None, vocab_size=None)
                try:
                    size = build_tokenizer(settings).vocab_size
                except ConfigError as e:
                    raise ConfigError(f"--input: the tokenizer cannot be used for training: {e}") from None
                return TokenizerSource(tokenizer_type=kind, files=(file,)), size
        log.warning("%s has no tokenizer.json or tokenizer.model: runs on the import must name a "
                    "tokenizer (--tokenizer-type/--tokenizer-model)", self.path)
        return TokenizerSource(), None

    def _index_weights(self) -> dict[str, str]:
        weight_map, indexes = _weight_map(self.path)
        self._files += indexes
        files = sorted(set(weight_map.values()))
        self._files += files
        self._bins: dict[str, dict[str, Any]] = {}
        located: dict[str, str] = {}
        for file in files:
            if file.endswith(".safetensors"):
                names = safetensors_names(file)
            else:
                self._bins[file] = _load_bin(file)
                names = list(self._bins[file])
            located.update(dict.fromkeys(names, file))
        for name, file in weight_map.items():
            if name and located.get(name) != file:
                raise CheckpointError(f"--input: the index names {name} in {file}, which does not hold it")
        return located

    def _resolve(self, hf_name: str) -> tuple[str, str]:
        """``(file, stored name)`` of an HF tensor name (with alternatives ``a|b`` and prefixes)."""
        for alternative in hf_name.split("|"):
            for prefix in (*self.family.prefixes, ""):
                if prefix + alternative in self._locate:
                    return self._locate[prefix + alternative], prefix + alternative
        raise CheckpointError(f"--input: {self.path} has no tensor {hf_name!r}, which "
                              f"{self.hf_class} with this config.json needs; the files are incomplete")

    def model_flags(self) -> dict[str, Any]:
        """Our flat config of the model (``ImportSource``)."""
        return dict(self._flags)

    def _read(self, file: str, name: str) -> Any:
        if file in self._bins:
            return self._bins[file][name]
        from safetensors import safe_open

        with safe_open(file, framework="pt") as f:
            return f.get_tensor(name)

    def _loader(self, recipe: Recipe) -> TensorLoader:
        return lambda: recipe.combine([self._read(f, n) for f, n in self._sources[recipe.name]])

    def tensors(self) -> Iterator[tuple[str, TensorLoader]]:
        """``(canonical name, loader)`` for every parameter (``ImportSource``)."""
        for recipe in self._recipes:
            yield recipe.name, self._loader(recipe)

    def optimizer_states(self) -> Iterator[tuple[str, str, TensorLoader]]:
        """None: Hugging Face directories hold no optimizer state."""
        return iter(())

    def optimizer_step(self) -> None:
        """None: no optimizer state, so no step."""
        return None

    def limits(self) -> dict[str, dict[str, Any]]:
        """Bounds from the config (a sliding window limits ``--seq-length``; ``ImportSource``)."""
        return dict(self._limits)

    def tokenizer(self) -> TokenizerSource:
        """The directory's tokenizer file, if any."""
        return self._tokenizer

    def input_files(self) -> list[str]:
        """Every file read: config, indexes, weights, tokenizer."""
        return [*self._files, *self._tokenizer.files]


def is_hf_directory(path: str) -> bool:
    """A directory with a ``config.json`` naming a ``model_type``."""
    config = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config):
        return False
    try:
        with open(config) as f:
            return "model_type" in json.load(f)
    except (OSError, ValueError):
        return False


register_source_format(SourceFormat(name="hf", detect=is_hf_directory, open=HFSource,
                                    description="Hugging Face model directory (config.json + weights)"))
