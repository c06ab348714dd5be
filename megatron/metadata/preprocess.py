"""Tokenize documents with metadata prefixes: text, loss-mask and summary outputs.

For ``--output-prefix OUT`` and text key ``text`` this writes

- ``OUT_text_document.{bin,idx}``: prefix tokens + text tokens (+ EOD) per document;
- ``OUT_lossmask_document.{bin,idx}``: uint8 per token, same document lengths, 1 = trainable,
  0 = metadata (the training loss mask reads it through the same indices);
- ``OUT_metadata.json``: template, keys, probability, seed, the fraction of documents that got a
  prefix, and per key how often it was present, missing or malformed.

Prefix and text are tokenized separately (as BigScience does), so a prefix never merges with
the first text token. A document without a prefix is tokenized exactly as plain preprocessing
does: with probability 0 the text dataset is byte-identical to ``tools/preprocess_data.py``'s.
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
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError
from megatron.data.indexed import IndexedWriter, token_dtype
from megatron.data.preprocess import (
    JSON_SUFFIXES,
    PreprocessProgress,
    chunked,
    log_progress,
    output_prefix,
)
from megatron.data.tokenizers import Tokenizer, build_tokenizer, file_sha256
from megatron.metadata.render import TEMPLATES, PrefixFormat, gets_prefix, render_document

log = logging.getLogger(__name__)

LOSSMASK_KEY = "lossmask"
"""Loss-mask datasets are ``{prefix}_lossmask_document``."""


def lossmask_prefix(prefix: str) -> str:
    """``OUT_lossmask_document`` for ``--output-prefix OUT``."""
    return output_prefix(prefix, LOSSMASK_KEY)


def metadata_json_path(prefix: str) -> str:
    """``OUT_metadata.json`` for ``--output-prefix OUT``."""
    return f"{prefix}_metadata.json"


@dataclass(frozen=True, slots=True)
class MetadataOptions:
    """What to render and how often.

    Attributes:
        keys: The metadata list: the keys to render, in prefix order (``--metadata-keys``).
        template: ``bigscience`` or ``meco`` (``--metadata-template``).
        probability: Chance that a document gets its prefix (``--metadata-probability``).
        seed: Seeds the per-document choice (``--metadata-seed``).
        fmt: Separators.
    """

    keys: tuple[str, ...]
    template: str = "bigscience"
    probability: float = 0.5
    seed: int = 1234
    fmt: PrefixFormat = PrefixFormat()

    def __post_init__(self) -> None:
        if not self.keys or any(not k for k in self.keys):
            raise ConfigError(
                "--metadata-keys: give at least one key, e.g. --metadata-keys url,timestamp"
            )
        if len(set(self.keys)) != len(self.keys):
            raise ConfigError(f"--metadata-keys: a key is repeated in {list(self.keys)}")
        allowed = TEMPLATES.get(self.template).keys
        if allowed is not None and set(self.keys) - set(allowed):
            raise ConfigError(
                f"--metadata-keys: the {self.template} template renders only {list(allowed)}, "
                f"not {sorted(set(self.keys) - set(allowed))}; use --metadata-template bigscience"
            )
        if not 0.0 <= self.probability <= 1.0:
            raise ConfigError(f"--metadata-probability: must be in [0, 1], got {self.probability}")


@dataclass
class MetadataReport:
    """Counts of a run (written to ``OUT_metadata.json``)."""

    documents: int = 0
    prefixed: int = 0
    present: Counter = field(default_factory=Counter)
    missing: Counter = field(default_factory=Counter)
    malformed: Counter = field(default_factory=Counter)
    first_record_keys: tuple[str, ...] = ()

    @property
    def fraction_prefixed(self) -> float:
        """Share of documents that got a prefix."""
        return self.prefixed / max(self.documents, 1)


@dataclass(frozen=True, slots=True)
class MetadataStats:
    """Outputs and counts of a run."""

    text_prefix: str
    lossmask_prefix: str
    json_path: str
    documents: int
    tokens: int
    prefix_tokens: int
    seconds: float
    report: MetadataReport


def _value(raw: object) -> str | None:
    """A record field as text; lists (e.g. classifiers) joined by ``; ``; empty = missing."""
    if raw is None:
        return None
    if isinstance(raw, list):
        raw = "; ".join(str(v) for v in raw)
    elif isinstance(raw, dict):
        raw = json.dumps(raw, sort_keys=True)
    text = str(raw).strip()
    return text or None


def iter_records(
    paths: Sequence[str], text_key: str, keys: Sequence[str]
) -> Iterator[tuple[str, dict[str, str | None], tuple[str, ...]]]:
    """``(text, {key: value or None}, the record's field names)`` per jsonl record, in order.

    Raises:
        ConfigError: A plain-text input (it has no metadata).
        ValueError: A line that does not parse or lacks the text key (names file:line).
    """
    for path in paths:
        if not path.endswith(JSON_SUFFIXES):
            raise ConfigError(
                f"--metadata-keys: needs jsonl records with metadata fields; {path} is plain text"
            )
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    text = str(record[text_key])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{number}: bad record ({e!r})") from None
                yield text, {key: _value(record.get(key)) for key in keys}, tuple(record)


def rendered_pairs(
    records: Iterator, options: MetadataOptions, report: MetadataReport
) -> Iterator[tuple[str, str]]:
    """``(prefix, text)`` per document; counts what happened in ``report``."""
    for index, (text, metadata, record_keys) in enumerate(records):
        if index == 0:
            report.first_record_keys = record_keys
        report.documents += 1
        for key in options.keys:
            (report.present if metadata[key] else report.missing)[key] += 1
        if not gets_prefix(options.seed, index, options.probability):
            yield "", text
            continue
        rendered = render_document(text, metadata, options.keys, options.template, options.fmt)
        report.prefixed += bool(rendered.prefix)
        report.malformed.update(rendered.malformed)
        yield rendered.prefix, rendered.text


_TOKENIZER: Tokenizer | None = None


def _init_worker(cfg: DataConfig) -> None:
    global _TOKENIZER
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # see megatron/data/preprocess.py
    _TOKENIZER = build_tokenizer(cfg)


def _encode_pairs(args: tuple[list[tuple[str, str]], bool]) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs, append_eod = args
    tok = _TOKENIZER
    assert tok is not None, "_init_worker runs before any chunk"
    dtype = token_dtype(tok.vocab_size)
    texts = tok.encode_batch([text for _, text in pairs])
    with_prefix = [i for i, (prefix, _) in enumerate(pairs) if prefix]
    prefixes: list[list[int]] = [[] for _ in pairs]
    for i, ids in zip(
        with_prefix, tok.encode_batch([pairs[i][0] for i in with_prefix]), strict=True
    ):
        prefixes[i] = ids
    out = []
    for prefix_ids, text_ids in zip(prefixes, texts, strict=True):
        k, n = len(prefix_ids), len(text_ids)
        tokens = np.empty(k + n + int(append_eod), dtype=dtype)
        tokens[:k] = prefix_ids
        tokens[k : k + n] = text_ids
        if append_eod:
            tokens[-1] = tok.eod
        mask = np.ones(tokens.size, dtype=np.uint8)
        mask[:k] = 0  # metadata tokens are context, never targets
        out.append((tokens, mask))
    return out


def _check_keys(report: MetadataReport, options: MetadataOptions, inputs: Sequence[str]) -> None:
    """A key no document has is an error; keys missing from some documents are reported."""
    absent = [k for k in options.keys if report.present[k] == 0]
    if absent and report.documents:
        raise ConfigError(
            f"--metadata-keys: no document of {', '.join(inputs)} has {absent}; the first record's "
            f"fields are {list(report.first_record_keys)}"
        )
    for key in options.keys:
        if report.missing[key]:
            log.warning(
                "metadata key %r missing from %d of %d documents (skipped there)",
                key,
                report.missing[key],
                report.documents,
            )
        if report.malformed[key]:
            log.warning(
                "metadata key %r malformed in %d prefixed documents (kept as text)",
                key,
                report.malformed[key],
            )


def write_metadata_json(
    path: str, stats: MetadataStats, options: MetadataOptions, tokenizer: str, inputs: Sequence[str]
) -> None:
    """The run summary next to the datasets (written last, atomically).

    The inputs' paths and SHA-256 let ``tools/eval_metadata_ppl.py`` refuse an evaluation file
    that was trained on (the seed's test-file-is-a-training-shard bug).
    """
    r = stats.report
    summary = {
        "inputs": [{"path": os.path.abspath(p), "sha256": file_sha256(p)} for p in inputs],
        "template": options.template,
        "keys": list(options.keys),
        "probability": options.probability,
        "seed": options.seed,
        "format": {k: getattr(options.fmt, k) for k in options.fmt.__slots__},
        "tokenizer": tokenizer,
        "text_prefix": stats.text_prefix,
        "lossmask_prefix": stats.lossmask_prefix,
        "documents": r.documents,
        "prefixed_documents": r.prefixed,
        "fraction_prefixed": r.fraction_prefixed,
        "tokens": stats.tokens,
        "prefix_tokens": stats.prefix_tokens,
        "present": dict(r.present),
        "missing": dict(r.missing),
        "malformed": dict(r.malformed),
        "local_metadata": "none (prefixes only)",
    }
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, path)


def tokenize_with_metadata(
    inputs: Sequence[str],
    prefix: str,
    tokenizer_cfg: DataConfig,
    options: MetadataOptions,
    *,
    text_key: str = "text",
    workers: int = 1,
    append_eod: bool = True,
    chunk_size: int = 512,
    progress_every: float = 5.0,
    on_progress: Callable[[PreprocessProgress], None] = log_progress,
) -> MetadataStats:
    """Tokenize jsonl ``inputs`` with metadata prefixes (see the module docstring).

    Raises:
        FileNotFoundError: An input does not exist.
        ConfigError: Bad options, plain-text inputs, or a key that no document has (no output
            is left then).
        ValueError: A malformed jsonl line (names file:line); no output is left.
    """
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {workers}")
    for path in inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--input: no such file {path}")
    tokenizer = build_tokenizer(tokenizer_cfg)
    report = MetadataReport()
    pairs = rendered_pairs(iter_records(inputs, text_key, options.keys), options, report)
    tasks = chunked(pairs, chunk_size, append_eod)
    text_out, mask_out = output_prefix(prefix, text_key), lossmask_prefix(prefix)
    tokens = prefix_tokens = 0
    with contextlib.ExitStack() as stack:
        text_writer = stack.enter_context(IndexedWriter(text_out, tokenizer.vocab_size))
        mask_writer = stack.enter_context(IndexedWriter(mask_out, 2, dtype=np.uint8))
        started = last_report = time.perf_counter()
        if workers > 1:
            pool = multiprocessing.Pool(workers, _init_worker, (tokenizer_cfg,))
            stack.callback(pool.terminate)
            results = pool.imap(_encode_pairs, tasks)  # in input order: worker-count independent
        else:
            _init_worker(tokenizer_cfg)
            results = map(_encode_pairs, tasks)
        for chunk in results:
            for ids, mask in chunk:
                text_writer.add_document(ids)
                mask_writer.add_document(mask)
                tokens += ids.size
                prefix_tokens += int(mask.size - mask.sum(dtype=np.int64))
            now = time.perf_counter()
            if now - last_report >= progress_every:
                last_report = now
                on_progress(PreprocessProgress(text_writer.num_documents, tokens, now - started))
        if workers > 1:
            pool.close()
            pool.join()
        _check_keys(report, options, inputs)  # raising here removes the unfinished outputs
    seconds = time.perf_counter() - started
    on_progress(PreprocessProgress(report.documents, tokens, seconds, done=True))
    stats = MetadataStats(
        text_out,
        mask_out,
        metadata_json_path(prefix),
        report.documents,
        tokens,
        prefix_tokens,
        seconds,
        report,
    )
    write_metadata_json(stats.json_path, stats, options, tokenizer_cfg.tokenizer_type, inputs)
    return stats
