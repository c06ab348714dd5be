"""Tokenize documents in the metadata-records format (local metadata inline, K pre-drawn variants).

For ``--output-prefix OUT`` and ``K`` variants this writes, per variant ``k`` (``OUT_k`` is
``OUT`` for ``k = 0`` and ``OUT_variant{k}`` after it):

- ``OUT_k_text_document.{bin,idx}``: prefix tokens + text with local metadata + EOD;
- ``OUT_k_lossmask_document.{bin,idx}``: uint8 per token, 1 = trainable, 0 on the prefix and (unless
  ``--treat-local-metadata-as-regular-text``) on every token holding an inserted character;
- ``OUT_metadata.json``: options, counts per variant and per key, the variant list.

Variant ``k`` holds the draws of epoch ``k`` (``megatron/metadata/sampling.py``); training reads
variant ``epoch mod K``, so the metadata is re-drawn every epoch (with period K) without
re-tokenizing. A document that gets no metadata is tokenized exactly as plain preprocessing does.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError
from megatron.data.indexed import IndexedWriter, token_dtype
from megatron.data.preprocess import JSON_SUFFIXES, chunked, output_prefix
from megatron.data.tokenizers import build_tokenizer, file_sha256
from megatron.metadata.local import LocalFormat, render_with_local
from megatron.metadata.preprocess import lossmask_prefix, metadata_json_path
from megatron.metadata.records import Document, keep_keys, parse_document
from megatron.metadata.render import PrefixFormat
from megatron.metadata.sampling import SamplingOptions, draw_keys, encode_with_mask

log = logging.getLogger(__name__)


def variant_prefix(prefix: str, k: int) -> str:
    """``OUT`` for variant 0, ``OUT_variant{k}`` after it."""
    return prefix if k == 0 else f"{prefix}_variant{k}"


@dataclass(frozen=True, slots=True)
class LocalOptions:
    """What to render, how, and how often.

    Attributes:
        order: The metadata list: keys used (global and local), in rendering priority.
        sampling: Per-example draws.
        fmt: Prefix separators and global renderers' settings.
        local: Local metadata settings.
        local_as_text: Train on local metadata (``--treat-local-metadata-as-regular-text``).
        variants: Pre-drawn variants K (epoch e trains on variant e mod K).
    """

    order: tuple[str, ...]
    sampling: SamplingOptions = SamplingOptions()
    fmt: PrefixFormat = PrefixFormat()
    local: LocalFormat = LocalFormat()
    local_as_text: bool = False
    variants: int = 1

    def __post_init__(self) -> None:
        if not self.order or len(set(self.order)) != len(self.order):
            raise ConfigError(f"--metadata-list: give distinct keys, got {list(self.order)}")
        if self.variants < 1:
            raise ConfigError(f"--metadata-variants: must be >= 1, got {self.variants}")


@dataclass
class VariantCounts:
    """Counts of one variant."""

    with_metadata: int = 0
    tokens: int = 0
    metadata_tokens: int = 0
    kept: Counter = field(default_factory=Counter)


def encode_document(  # noqa: ANN201
    tok, doc: Document, opts: LocalOptions, epoch: int, index: int, name: str, eod: bool = True  # noqa: ANN001
):
    """``(tokens, uint8 loss mask, kept keys or None)`` of one document in one epoch/variant."""
    present = set(doc.keys())
    drawn = draw_keys([k for k in opts.order if k in present], opts.sampling, epoch, index)
    dtype = token_dtype(tok.vocab_size)
    if drawn:
        rendered = render_with_local(keep_keys(doc, drawn), opts.order, opts.fmt, opts.local, name)
        prefix_ids = tok.encode(rendered.prefix) if rendered.prefix else []
        if opts.local_as_text or not any(rendered.mask):
            text_ids, local = tok.encode(rendered.text), None
        else:
            text_ids, local = encode_with_mask(tok, rendered.text, rendered.mask)
    else:
        prefix_ids, text_ids, local = [], tok.encode(doc.text), None
    k, n = len(prefix_ids), len(text_ids)
    tokens = np.empty(k + n + int(eod), dtype=dtype)
    tokens[:k], tokens[k : k + n] = prefix_ids, text_ids
    if eod:
        tokens[-1] = tok.eod
    mask = np.ones(tokens.size, dtype=np.uint8)
    mask[:k] = 0
    if local is not None:
        mask[k : k + n][local] = 0
    return tokens, mask, drawn


def iter_documents(paths: Sequence[str], text_key: str) -> Iterator[tuple[Document, str]]:
    """``(checked document, "file:line")`` per jsonl record (errors name file and line)."""
    for path in paths:
        if not path.endswith(JSON_SUFFIXES):
            raise ConfigError(f"--input: metadata records need jsonl files; {path} is plain text")
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                name = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{name}: bad record ({e!r})") from None
                yield parse_document(record, text_key, name), name


_STATE: dict = {}


def _init_worker(cfg: DataConfig, opts: LocalOptions) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _STATE.update(tok=build_tokenizer(cfg), opts=opts)


def _encode_chunk(args: tuple[list, bool]) -> list[list[tuple]]:
    items, eod = args
    tok, opts = _STATE["tok"], _STATE["opts"]
    return [
        [encode_document(tok, doc, opts, k, index, name, eod) for k in range(opts.variants)]
        for index, (doc, name) in items
    ]


@dataclass(frozen=True, slots=True)
class LocalStats:
    """Outputs and counts of a run."""

    text_prefixes: tuple[str, ...]
    lossmask_prefixes: tuple[str, ...]
    json_path: str
    documents: int
    counts: tuple[VariantCounts, ...]
    seconds: float


def tokenize_records(
    inputs: Sequence[str],
    prefix: str,
    tokenizer_cfg: DataConfig,
    opts: LocalOptions,
    *,
    text_key: str = "text",
    workers: int = 1,
    append_eod: bool = True,
    chunk_size: int = 256,
) -> LocalStats:
    """Tokenize metadata-records jsonl ``inputs`` into K variants (see the module docstring).

    Raises:
        FileNotFoundError: An input does not exist.
        ConfigError: Bad options or plain-text inputs.
        RecordError: A bad metadata record (names file:line and record); no output is left.
    """
    for path in inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--input: no such file {path}")
    tok = build_tokenizer(tokenizer_cfg)
    K = opts.variants
    texts = tuple(output_prefix(variant_prefix(prefix, k), text_key) for k in range(K))
    masks = tuple(lossmask_prefix(variant_prefix(prefix, k)) for k in range(K))
    counts = tuple(VariantCounts() for _ in range(K))
    documents = 0
    started = time.perf_counter()
    tasks = chunked(enumerate(iter_documents(inputs, text_key)), chunk_size, append_eod)
    with contextlib.ExitStack() as stack:
        writers = [
            (
                stack.enter_context(IndexedWriter(t, tok.vocab_size)),
                stack.enter_context(IndexedWriter(m, 2, dtype=np.uint8)),
            )
            for t, m in zip(texts, masks, strict=True)
        ]
        if workers > 1:
            pool = multiprocessing.Pool(workers, _init_worker, (tokenizer_cfg, opts))
            stack.callback(pool.terminate)
            results = pool.imap(_encode_chunk, tasks)
        else:
            _init_worker(tokenizer_cfg, opts)
            results = map(_encode_chunk, tasks)
        for chunk in results:
            for per_variant in chunk:
                documents += 1
                for (tw, mw), c, (ids, mask, drawn) in zip(writers, counts, per_variant, strict=True):
                    tw.add_document(ids)
                    mw.add_document(mask)
                    c.tokens += ids.size
                    c.metadata_tokens += int(mask.size - mask.sum(dtype=np.int64))
                    c.with_metadata += bool(drawn)
                    c.kept.update(drawn or ())
    stats = LocalStats(texts, masks, metadata_json_path(prefix), documents, counts,
                       time.perf_counter() - started)  # fmt: skip
    _write_json(stats, opts, tokenizer_cfg.tokenizer_type, inputs, text_key)
    return stats


def _write_json(stats: LocalStats, opts: LocalOptions, tokenizer: str, inputs, text_key) -> None:  # noqa: ANN001
    s, lf = opts.sampling, opts.local
    summary = {
        "inputs": [{"path": os.path.abspath(p), "sha256": file_sha256(p)} for p in inputs],
        "format": "records",
        "template": "bigscience",
        "keys": list(opts.order),
        "text_key": text_key,
        "probability": s.probability,
        "seed": s.seed,
        "random_sample_metadata": s.random_sample,
        "random_sample_metadata_weights": dict(s.weights),
        "html_overall_sample_rate": s.html_rate,
        "local_metadata": "trained on (regular text)" if opts.local_as_text else "masked",
        "local_format": {
            "attributes_to_keep": lf.attributes_to_keep,
            "entity_setting": lf.entity_setting,
            "special_start": dict(lf.special_start),
            "special_end": dict(lf.special_end),
            "local_in_prefix": lf.local_in_prefix,
        },
        "tokenizer": tokenizer,
        "text_prefix": stats.text_prefixes[0],
        "lossmask_prefix": stats.lossmask_prefixes[0],
        "variants": [
            {
                "text_prefix": t,
                "lossmask_prefix": m,
                "documents_with_metadata": c.with_metadata,
                "tokens": c.tokens,
                "metadata_tokens": c.metadata_tokens,
                "kept": dict(c.kept),
            }
            for t, m, c in zip(stats.text_prefixes, stats.lossmask_prefixes, stats.counts, strict=True)
        ],
        "documents": stats.documents,
        "fraction_prefixed": stats.counts[0].with_metadata / max(stats.documents, 1),
    }
    tmp = f"{stats.json_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, stats.json_path)
