"""The sidecar ``<prefix>_meta.json`` of a tokenized dataset: where it came from and how.

::

    {"inputs": [{"path": ..., "format": "parquet", "sha256": ..., "rows": 1200}, ...],
     "documents": 1200, "tokens": 345678, "json_keys": ["text"], "append_eod": true,
     "command": ["tools/preprocess_data.py", "--input", ...],
     "tokenizer": {"type": "hf", "files": ["tok.json"], "sha256": ["..."], "vocab_size": 50257}}

``tokenizer`` has the shape of the checkpoint metadata's tokenizer identity
(``megatron.checkpointing.metadata.tokenizer_identity``): type, the files as given, each file's
SHA-256 and the tokenizer's vocabulary size before padding, so a training run can refuse a
dataset made with another tokenizer by comparing the two.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from megatron.data.tokenizers import TokenizerSettings, file_sha256


def sidecar_path(prefix: str) -> str:
    """``OUT_meta.json`` for ``--output-prefix OUT``."""
    return f"{prefix}_meta.json"


def tokenizer_record(cfg: TokenizerSettings, vocab_size: int) -> dict[str, Any]:
    """``{"type", "files", "sha256", "vocab_size"}`` of the tokenizer ``cfg`` names."""
    files = [f for f in (cfg.tokenizer_model, cfg.vocab_file, cfg.merge_file) if f]
    return {"type": cfg.tokenizer_type, "files": files,
            "sha256": [file_sha256(f) for f in files], "vocab_size": int(vocab_size)}


def write_sidecar(prefix: str, *, inputs: Sequence[tuple[str, str, int]], tokenizer: dict[str, Any],
                  documents: int, tokens: int, json_keys: Sequence[str], append_eod: bool,
                  command: Sequence[str] | None) -> str:
    """Write ``<prefix>_meta.json`` atomically and return its path.

    Args:
        prefix: The ``--output-prefix``.
        inputs: ``(path, format, rows read)`` per input file, in reading order.
        tokenizer: ``tokenizer_record(...)``.
        documents: Documents written (per key).
        tokens: Tokens written over all keys.
        json_keys: The text fields.
        append_eod: Whether documents end with EOD.
        command: The command line that made the dataset.
    """
    record = {
        "inputs": [{"path": os.path.abspath(path), "format": kind, "sha256": file_sha256(path),
                    "rows": rows} for path, kind, rows in inputs],
        "documents": documents, "tokens": tokens, "json_keys": list(json_keys),
        "append_eod": append_eod, "command": list(command) if command else None,
        "tokenizer": tokenizer,
    }
    path = sidecar_path(prefix)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_sidecar(prefix: str) -> dict[str, Any] | None:
    """The sidecar of dataset ``prefix`` (``X`` or ``X_text_document``), None when absent."""
    candidates = [prefix]
    if prefix.endswith("_document"):
        candidates.append(prefix[: -len("_document")].rsplit("_", 1)[0])
    for candidate in candidates:
        path = sidecar_path(candidate)
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
    return None
