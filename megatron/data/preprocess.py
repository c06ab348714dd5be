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
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError
from megatron.data.indexed import IndexedWriter, token_dtype
from megatron.data.tokenizers import Tokenizer, build_tokenizer

log = logging.getLogger(__name__)

JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
"""Inputs read as one JSON record per line; anything else is one plain-text document."""


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


@dataclass(frozen=True, slots=True)
class PreprocessProgress:
    """A progress report: counts so far and rates since the start.

    Attributes:
        documents: Documents written.
        tokens: Tokens written over all keys.
        seconds: Wall time since the start.
        done: True for the final report.
    """

    documents: int
    tokens: int
    seconds: float
    done: bool = False

    def describe(self) -> str:
        """One line: ``1,234 docs (56.1 docs/s), 7,890 tokens (345 tokens/s) in 22.0 s``."""
        seconds = max(self.seconds, 1e-9)
        return (
            f"{self.documents:,} docs ({self.documents / seconds:,.1f} docs/s), "
            f"{self.tokens:,} tokens ({self.tokens / seconds:,.0f} tokens/s) in {self.seconds:.1f} s"
        )


def log_progress(progress: PreprocessProgress) -> None:
    """The default progress callback: an INFO log line."""
    log.info("%s%s", "done: " if progress.done else "", progress.describe())


def iter_documents(paths: Sequence[str], json_keys: Sequence[str]) -> Iterator[dict[str, str]]:
    """Yield ``{key: text}`` per document from jsonl(.gz) or plain-text files, in order.

    Raises:
        ValueError: A JSON line that does not parse or lacks a key; the message names the line.
    """
    for path in paths:
        if path.endswith(JSON_SUFFIXES):
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
    # A forked worker inherits the parent's Python SIGTERM handler (a training run's graceful
    # stop), which would make Pool.terminate() wait for it forever: workers die on SIGTERM.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER_TOKENIZER = build_tokenizer(cfg)


def _encode_chunk(args: tuple[list[dict[str, str]], bool]) -> list[dict[str, np.ndarray]]:
    docs, append_eod = args
    tok = _WORKER_TOKENIZER
    assert tok is not None, "_init_worker runs before any chunk"
    # Arrays in the on-disk dtype: a quarter of int64's bytes to pickle back from workers.
    dtype = token_dtype(tok.vocab_size)
    out: list[dict[str, np.ndarray]] = [{} for _ in docs]
    # One batch call per key lets the Rust / C++ tokenizers encode the chunk in parallel.
    for key in docs[0] if docs else ():
        for encoded, ids in zip(out, tok.encode_batch([doc[key] for doc in docs]), strict=True):
            array = np.empty(len(ids) + int(append_eod), dtype=dtype)
            array[: len(ids)] = ids
            if append_eod:
                array[-1] = tok.eod
            encoded[key] = array
    return out


def chunked(docs: Iterator[Any], size: int, append_eod: bool):  # noqa: ANN201
    """Worker tasks: lists of ``size`` documents (any item type), each with ``append_eod``."""
    chunk: list[Any] = []
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


def _check_inputs(inputs: Sequence[str], workers: int) -> None:
    """Refuse a bad ``--workers`` or a missing ``--input`` before any work."""
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {workers}")
    for path in inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--input: no such file {path}")


def tokenize_to_indexed(
    inputs: Sequence[str],
    prefix: str,
    tokenizer_cfg: DataConfig,
    *,
    json_keys: Sequence[str] = ("text",),
    workers: int = 1,
    append_eod: bool = True,
    chunk_size: int = 512,
    progress_every: float = 5.0,
    on_progress: Callable[[PreprocessProgress], None] = log_progress,
) -> PreprocessStats:
    """Tokenize ``inputs`` into one indexed dataset per JSON key.

    Args:
        inputs: Input files.
        prefix: Output prefix (``{prefix}_{key}_document.bin/.idx``).
        tokenizer_cfg: Names the tokenizer (type and model files).
        json_keys: Text fields of jsonl records (plain text uses ``text``).
        workers: Tokenizer processes.
        append_eod: End every document with the tokenizer's end-of-document id.
        chunk_size: Documents per task sent to a worker (and per batch-encode call).
        progress_every: Seconds between progress reports.
        on_progress: Receives the periodic reports and a final one with ``done=True``.

    Returns:
        Counts and timing.

    Raises:
        FileNotFoundError: An input does not exist (the message names ``--input``).
        ConfigError: Bad ``--workers`` or an unloadable tokenizer.
        ValueError: A malformed jsonl line (the message names file:line); no output is left.
    """
    _check_inputs(inputs, workers)
    tokenizer = build_tokenizer(tokenizer_cfg)
    if any(not p.endswith(JSON_SUFFIXES) for p in inputs):
        json_keys = ("text",)
    tasks = chunked(iter_documents(inputs, json_keys), chunk_size, append_eod)
    documents = tokens = 0
    with contextlib.ExitStack() as stack:
        # Writers finalize (rename into place) only if the whole loop succeeds.
        writers = {
            key: stack.enter_context(
                IndexedWriter(output_prefix(prefix, key), tokenizer.vocab_size)
            )
            for key in json_keys
        }
        # Timed from here: the first writer imports megatron.core (seconds), which is not work.
        started = last_report = time.perf_counter()
        if workers > 1:
            pool = multiprocessing.Pool(workers, _init_worker, (tokenizer_cfg,))
            # On success the pool is closed and joined (below); terminate() only on an error:
            # it kills workers that may hold the task queue's lock, and joining the others can
            # then hang (CPython's Pool.terminate deadlock).
            stack.callback(pool.terminate)
            # imap keeps input order, so the output is the same for any number of workers.
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
            if now - last_report >= progress_every:
                last_report = now
                on_progress(PreprocessProgress(documents, tokens, now - started))
        if workers > 1:
            pool.close()
            pool.join()
    seconds = time.perf_counter() - started
    on_progress(PreprocessProgress(documents, tokens, seconds, done=True))
    prefixes = {key: output_prefix(prefix, key) for key in json_keys}
    return PreprocessStats(prefixes=prefixes, documents=documents, tokens=tokens, seconds=seconds)
