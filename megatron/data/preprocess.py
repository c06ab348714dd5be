"""Tokenize raw text into indexed datasets (the library behind ``tools/preprocess_data.py``).

Inputs: anything ``readers.py`` reads (JSONL plain/gz/zst, JSON, Parquet, Arrow, ``datasets``
directories; ``json_keys`` name the text fields, each written to its own
``{prefix}_{key}_document``), or plain-text files (each file is one document, written to
``{prefix}_text_document``). The main process reads batches; workers tokenize them in parallel
(a bounded number in flight); the main process writes them in input order, so the output does
not depend on the input format or the number of workers. ``<prefix>_meta.json`` records the
inputs, their SHA-256 and row counts, the tokenizer and the command (``sidecar.py``).
"""

from __future__ import annotations

import collections
import contextlib
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
from megatron.data.readers import InputFile, read_batches, read_records, resolve_inputs
from megatron.data.sidecar import tokenizer_record, write_sidecar
from megatron.data.tokenizers import Tokenizer, build_tokenizer

log = logging.getLogger(__name__)

JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst")
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
        fraction: Share of the input bytes read (None: unknown), for the ETA.
    """

    documents: int
    tokens: int
    seconds: float
    done: bool = False
    fraction: float | None = None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far (None when done or unknown)."""
        if self.done or not self.fraction or self.fraction <= 0:
            return None
        return self.seconds * (1.0 - min(self.fraction, 1.0)) / self.fraction

    def describe(self) -> str:
        """One line: ``12 docs (6.0 docs/s), 789 tokens (394 tokens/s) in 2.0 s, ETA 0m05s``."""
        seconds = max(self.seconds, 1e-9)
        line = (
            f"{self.documents:,} docs ({self.documents / seconds:,.1f} docs/s), "
            f"{self.tokens:,} tokens ({self.tokens / seconds:,.0f} tokens/s) "
            f"in {self.seconds:.1f} s"
        )
        eta = self.eta_seconds
        if eta is not None:
            line += f", ETA {int(eta) // 60}m{int(eta) % 60:02d}s"
        return line


def log_progress(progress: PreprocessProgress) -> None:
    """The default progress callback: an INFO log line."""
    log.info("%s%s", "done: " if progress.done else "", progress.describe())


def iter_documents(paths: Sequence[str], json_keys: Sequence[str]) -> Iterator[dict[str, str]]:
    """Yield ``{key: text}`` per document of ``paths`` (any format ``readers.py`` knows), in order.

    Raises:
        InputError: A record that does not parse, lacks a key or holds no string there.
    """
    for item in resolve_inputs(paths):
        # A plain-text file is one document under "text"; records use ``json_keys``.
        keys = ("text",) if item.format == "text" else json_keys
        for _, _, record in read_records([item], keys):
            yield record


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(cfg: DataConfig) -> None:
    global _WORKER_TOKENIZER
    # A forked worker inherits the parent's Python SIGTERM handler (a training run's graceful
    # stop), which would make Pool.terminate() wait for it forever: workers die on SIGTERM.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER_TOKENIZER = build_tokenizer(cfg)


Encoded = dict[str, tuple[np.ndarray, np.ndarray]]
"""Per key: all documents' ids concatenated (on-disk dtype) and each document's length."""


def _encode_columns(args: tuple[dict[str, list[str]], bool]) -> Encoded:
    """Tokenize one chunk: per key, the concatenated ids and the document lengths."""
    columns, append_eod = args
    tok = _WORKER_TOKENIZER
    assert tok is not None, "_init_worker runs before any chunk"
    # The on-disk dtype and one array per key: a fraction of the bytes (and pickles) of lists.
    dtype = token_dtype(tok.vocab_size)
    out: Encoded = {}
    for key, texts in columns.items():
        # One batch call per key lets the Rust / C++ tokenizers encode the chunk in parallel.
        encoded = tok.encode_batch(texts)
        lengths = np.fromiter((len(ids) + append_eod for ids in encoded), np.int64, len(encoded))
        flat = np.empty(int(lengths.sum()), dtype=dtype)
        position = 0
        for ids, length in zip(encoded, lengths.tolist(), strict=True):
            flat[position : position + len(ids)] = ids
            if append_eod:
                flat[position + length - 1] = tok.eod
            position += length
        out[key] = (flat, lengths)
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


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {workers}")


def _as_inputs(inputs: Sequence[str | InputFile]) -> list[InputFile]:
    """Input files of ``inputs`` (strings are resolved: globs, directories, save_to_disk)."""
    out: list[InputFile] = []
    for item in inputs:
        out += [item] if isinstance(item, InputFile) else resolve_inputs([item])
    return out


@dataclass(slots=True)
class _Reading:
    """What the reader has consumed: rows per file and the input bytes read."""

    inputs: list[InputFile]
    rows: dict[str, int]
    total_bytes: int
    done_bytes: int = 0

    def tasks(self, keys: Sequence[str], chunk_size: int, append_eod: bool
              ) -> Iterator[tuple[tuple[dict[str, list[str]], bool], float]]:
        """``((columns, append_eod), fraction read)`` per chunk, in input order."""
        for item in self.inputs:
            finished = self.done_bytes
            for batch in read_batches([item], keys, chunk_size):
                self.rows[item.path] = self.rows.get(item.path, 0) + len(batch.rows)
                fraction = (finished + batch.done_bytes) / max(self.total_bytes, 1)
                yield (batch.columns, append_eod), fraction
            self.rows.setdefault(item.path, 0)
            self.done_bytes = finished + os.path.getsize(item.path)


def _in_order(tasks: Iterator[tuple[Any, float]], workers: int, cfg: DataConfig,
              stack: contextlib.ExitStack) -> Iterator[tuple[Encoded, float]]:
    """Encoded chunks in input order; at most ``2 * workers`` chunks in flight, so memory stays
    bounded by the chunk size (``Pool.imap`` would read the whole input ahead)."""
    if workers == 1:
        _init_worker(cfg)
        for task, fraction in tasks:
            yield _encode_columns(task), fraction
        return
    pool = multiprocessing.Pool(workers, _init_worker, (cfg,))
    # On success the pool is closed and joined (below); terminate() only on an error: it kills
    # workers that may hold the task queue's lock, and joining the others can then hang
    # (CPython's Pool.terminate deadlock).
    stack.callback(pool.terminate)
    pending: collections.deque = collections.deque()
    for task, fraction in tasks:
        pending.append((pool.apply_async(_encode_columns, (task,)), fraction))
        if len(pending) >= 2 * workers:
            result, done = pending.popleft()
            yield result.get(), done
    while pending:
        result, done = pending.popleft()
        yield result.get(), done
    pool.close()
    pool.join()


def tokenize_to_indexed(
    inputs: Sequence[str | InputFile],
    prefix: str,
    tokenizer_cfg: DataConfig,
    *,
    json_keys: Sequence[str] = ("text",),
    workers: int = 1,
    append_eod: bool = True,
    chunk_size: int = 512,
    progress_every: float = 5.0,
    on_progress: Callable[[PreprocessProgress], None] = log_progress,
    command: Sequence[str] | None = None,
) -> PreprocessStats:
    """Tokenize ``inputs`` into one indexed dataset per JSON key, plus ``<prefix>_meta.json``.

    Args:
        inputs: Input files, globs or directories (``readers.resolve_inputs``), or resolved
            ``InputFile`` s (e.g. ``readers.hf_dataset_files``).
        prefix: Output prefix (``{prefix}_{key}_document.bin/.idx``).
        tokenizer_cfg: Names the tokenizer (type and model files).
        json_keys: Text fields of the records (plain text uses ``text``).
        workers: Tokenizer processes.
        append_eod: End every document with the tokenizer's end-of-document id.
        chunk_size: Documents per read batch, per worker task and per batch-encode call.
        progress_every: Seconds between progress reports.
        on_progress: Receives the periodic reports and a final one with ``done=True``.
        command: The command line, recorded in the sidecar.

    Returns:
        Counts and timing.

    Raises:
        FileNotFoundError: An input names nothing (the message names ``--input``).
        ConfigError: Bad ``--workers`` or an unloadable tokenizer.
        InputError: A bad record (the message names file:line or file: row); no output is left.
    """
    _check_workers(workers)
    files = _as_inputs(inputs)
    tokenizer = build_tokenizer(tokenizer_cfg)
    if any(item.format == "text" for item in files):
        json_keys = ("text",)
    reading = _Reading(files, {}, sum(os.path.getsize(item.path) for item in files))
    documents = tokens = 0
    with contextlib.ExitStack() as stack:
        # Writers finalize (rename into place) only if the whole loop succeeds.
        writers = {key: stack.enter_context(IndexedWriter(output_prefix(prefix, key),
                                                          tokenizer.vocab_size))
                   for key in json_keys}
        # Timed from here: the first writer imports megatron.core (seconds), which is not work.
        started = last_report = time.perf_counter()
        tasks = reading.tasks(json_keys, chunk_size, append_eod)
        for chunk, fraction in _in_order(tasks, workers, tokenizer_cfg, stack):
            for key, (flat, lengths) in chunk.items():
                writers[key].add_documents(flat, lengths)
                tokens += flat.size
            documents += len(next(iter(chunk.values()))[1]) if chunk else 0
            now = time.perf_counter()
            if now - last_report >= progress_every:
                last_report = now
                on_progress(PreprocessProgress(documents, tokens, now - started, fraction=fraction))
    seconds = time.perf_counter() - started
    write_sidecar(prefix, inputs=[(f.path, f.format, reading.rows[f.path]) for f in files],
                  tokenizer=tokenizer_record(tokenizer_cfg, tokenizer.vocab_size),
                  documents=documents, tokens=tokens, json_keys=json_keys,
                  append_eod=append_eod, command=command)
    on_progress(PreprocessProgress(documents, tokens, seconds, done=True, fraction=1.0))
    prefixes = {key: output_prefix(prefix, key) for key in json_keys}
    return PreprocessStats(prefixes=prefixes, documents=documents, tokens=tokens, seconds=seconds)
