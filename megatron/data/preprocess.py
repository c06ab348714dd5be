"""Tokenize raw text into indexed datasets (the library behind ``tools/preprocess_data.py``).

Inputs: ``.jsonl`` / ``.jsonl.gz`` (one JSON object per line; ``json_keys`` name the text
fields, each written to its own ``{prefix}_{key}_document``), or plain ``.txt`` files (each file
is one document, written to ``{prefix}_text_document``). Workers tokenize chunks of documents
in parallel; the main process writes them in input order, so the output does not depend on the
number of workers.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from megatron.config.data import DataConfig
from megatron.data.indexed import IndexedWriter
from megatron.data.tokenizers import Tokenizer, build_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PreprocessStats:
    """What a tokenization run produced.

    Attributes:
        prefixes: Output prefix per JSON key.
        documents: Documents written (per key).
        tokens: Tokens written over all keys.
        seconds: Wall time.
    """

    prefixes: dict[str, str]
    documents: int
    tokens: int
    seconds: float


def iter_documents(paths: Sequence[str], json_keys: Sequence[str]) -> Iterator[dict[str, str]]:
    """Yield ``{key: text}`` per document from jsonl(.gz) or plain-text files, in order.

    Raises:
        ValueError: A JSON line that does not parse or lacks a key; the message names the line.
    """
    for path in paths:
        if path.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        yield {key: str(record[key]) for key in json_keys}
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ValueError(f"{path}:{number}: bad record ({e!r})") from None
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                yield {"text": f.read()}


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(cfg: DataConfig) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = build_tokenizer(cfg)


def _encode_chunk(args: tuple[list[dict[str, str]], bool]) -> list[dict[str, np.ndarray]]:
    docs, append_eod = args
    tok = _WORKER_TOKENIZER
    assert tok is not None
    out = []
    for doc in docs:
        encoded = {}
        for key, text in doc.items():
            ids = tok.encode(text)
            if append_eod:
                ids.append(tok.eod)
            encoded[key] = np.asarray(ids, dtype=np.int64)
        out.append(encoded)
    return out


def _chunks(docs: Iterator[dict[str, str]], size: int, append_eod: bool):  # noqa: ANN202
    chunk: list[dict[str, str]] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk, append_eod
            chunk = []
    if chunk:
        yield chunk, append_eod


def output_prefix(prefix: str, key: str) -> str:
    """Megatron's naming: ``{prefix}_{key}_document``."""
    return f"{prefix}_{key}_document"


def tokenize_to_indexed(
    inputs: Sequence[str],
    prefix: str,
    tokenizer_cfg: DataConfig,
    *,
    json_keys: Sequence[str] = ("text",),
    workers: int = 1,
    append_eod: bool = True,
    chunk_size: int = 64,
    progress_every: float = 5.0,
) -> PreprocessStats:
    """Tokenize ``inputs`` into one indexed dataset per JSON key.

    Args:
        inputs: Input files.
        prefix: Output prefix (``{prefix}_{key}_document.bin/.idx``).
        tokenizer_cfg: Names the tokenizer (type and model file).
        json_keys: Text fields of jsonl records (plain text uses ``text``).
        workers: Tokenizer processes.
        append_eod: End every document with the tokenizer's end-of-document id.
        chunk_size: Documents per task sent to a worker.
        progress_every: Seconds between progress lines.

    Returns:
        Counts and timing.
    """
    tokenizer = build_tokenizer(tokenizer_cfg)
    if any(not p.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")) for p in inputs):
        json_keys = ("text",)
    for path in inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--input: no such file {path}")
    started = time.perf_counter()
    tasks = _chunks(iter_documents(inputs, json_keys), chunk_size, append_eod)
    documents = tokens = 0
    last_report = started
    with contextlib.ExitStack() as stack:
        # Writers finalize (rename into place) only if the whole loop succeeds.
        writers = {
            key: stack.enter_context(IndexedWriter(output_prefix(prefix, key), tokenizer.vocab_size))
            for key in json_keys
        }
        if workers > 1:
            pool = stack.enter_context(
                multiprocessing.Pool(workers, _init_worker, (tokenizer_cfg,))
            )
            results = pool.imap(_encode_chunk, tasks)
        else:
            _init_worker(tokenizer_cfg)
            results = map(_encode_chunk, tasks)
        for chunk in results:
            for doc in chunk:
                for key, ids in doc.items():
                    writers[key].add_document(ids)
                    tokens += ids.size
                documents += 1
            now = time.perf_counter()
            if now - last_report > progress_every:
                last_report = now
                log.info(
                    "%d docs (%.0f docs/s), %d tokens (%.0f tokens/s)",
                    documents,
                    documents / (now - started),
                    tokens,
                    tokens / (now - started),
                )
    seconds = time.perf_counter() - started
    return PreprocessStats(
        prefixes={key: output_prefix(prefix, key) for key in json_keys},
        documents=documents,
        tokens=tokens,
        seconds=seconds,
    )
