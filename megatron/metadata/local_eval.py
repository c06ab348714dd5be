"""Paired evaluation of records documents, per metadata type, as the BigScience evaluation does it.

For each type in the metadata list, the documents that have it are scored twice:

- **plain**: ``tok(text) + EOD``; every token after the first is a target;
- **with that metadata** (only that type, probability 1, local metadata masked): prefix + text
  with the type inline; targets are the non-metadata tokens except the first one (the plain
  row cannot score it), the logits of the local special tokens are set to -inf (their
  probability mass goes to the other tokens).

Perplexities are token-weighted (``exp(sum nll / tokens)``), each over its own targets; with a
byte tokenizer and no prefix both rows score exactly the same text tokens. A document whose
metadata row does not fit the context is left out (and counted), as the reference does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from megatron.metadata.local import LocalFormat, render_with_local
from megatron.metadata.records import Document, keep_keys
from megatron.metadata.render import PrefixFormat
from megatron.metadata.sampling import encode_with_mask

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TypeScore:
    """Summed negative log-likelihoods of one metadata type over its documents."""

    name: str
    documents: int = 0
    too_long: int = 0
    tokens_plain: int = 0
    tokens_meta: int = 0
    nll_plain: float = 0.0
    nll_meta: float = 0.0
    diffs: list[float] = field(default_factory=list)  # per document: nats/token, meta - plain

    @property
    def paired_se(self) -> float:
        """Standard error of the mean per-document log-ratio (nats/token) across documents: the
        evaluation-sample noise of ``log(ratio)`` (not the training-seed noise)."""
        n = len(self.diffs)
        return float(np.std(self.diffs, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

    @property
    def ppl_plain(self) -> float:
        """Token-weighted perplexity of the plain rows."""
        return math.exp(self.nll_plain / max(self.tokens_plain, 1))

    @property
    def ppl_meta(self) -> float:
        """Token-weighted perplexity of the rows with metadata."""
        return math.exp(self.nll_meta / max(self.tokens_meta, 1))

    def as_dict(self) -> dict:
        """JSON row."""
        return {
            "type": self.name, "documents": self.documents, "too_long": self.too_long,
            "tokens_plain": self.tokens_plain, "tokens_meta": self.tokens_meta,
            "ppl_plain": self.ppl_plain, "ppl_meta": self.ppl_meta,
            "ratio": self.ppl_meta / self.ppl_plain, "paired_se_log_ratio": self.paired_se,
        }  # fmt: skip


def metadata_row(tok, doc: Document, key: str, order, fmt, lf) -> tuple[list[int], np.ndarray]:  # noqa: ANN001
    """Tokens of ``doc`` with only ``key``'s metadata, and True on metadata tokens."""
    r = render_with_local(keep_keys(doc, [key]), order, fmt, lf)
    prefix = tok.encode(r.prefix) if r.prefix else []
    if any(r.mask):
        text, local = encode_with_mask(tok, r.text, r.mask)
    else:
        text, local = tok.encode(r.text), np.zeros(0, dtype=bool)
    mask = np.zeros(len(prefix) + len(text) + 1, dtype=bool)
    mask[: len(prefix)] = True
    if local.size:
        mask[len(prefix) : len(prefix) + len(text)] = local
    return [*prefix, *text, tok.eod], mask


def meta_targets(mask: np.ndarray) -> np.ndarray:
    """Label positions scored in a metadata row: non-metadata, not the first non-metadata token."""
    keep = ~mask
    first = int(np.argmax(keep)) if keep.any() else 0
    keep[first] = False
    keep[0] = False  # nothing predicts the first token
    return keep


def _nll(logits_fn: LogitsFn, row: list[int], targets: np.ndarray, banned: Sequence[int]) -> float:
    ids = torch.tensor([row])
    logits = logits_fn(ids[:, :-1])[0].float()
    if banned:
        logits[:, list(banned)] = float("-inf")
    logp = torch.log_softmax(logits, dim=-1)
    labels = ids[0, 1:]
    picked = -logp.gather(1, labels[:, None])[:, 0]
    return float(picked[torch.from_numpy(targets[1:])].double().sum())


def special_token_ids(tok, lf: LocalFormat) -> list[int]:  # noqa: ANN001
    """Ids of the local wrappers that are single tokens (e.g. added ``<HTML>`` tokens)."""
    ids = set()
    for text in (*lf.special_start.values(), *lf.special_end.values()):
        encoded = tok.encode(text.strip()) if text.strip() else []
        if len(encoded) == 1 and len(text.strip()) > 1:
            ids.add(encoded[0])
    return sorted(ids)


@torch.no_grad()
def evaluate_types(
    logits_fn: LogitsFn,
    tok,  # noqa: ANN001
    docs: Sequence[Document],
    order: Sequence[str],
    max_len: int,
    fmt: PrefixFormat = PrefixFormat(),
    lf: LocalFormat = LocalFormat(),
) -> list[TypeScore]:
    """One ``TypeScore`` per type of ``order`` that some document has (see the module docstring)."""
    banned = special_token_ids(tok, lf)
    scores = []
    for key in order:
        score = TypeScore(key)
        for doc in docs:
            if key not in doc.keys():
                continue
            row, mask = metadata_row(tok, doc, key, order, fmt, lf)
            plain = [*tok.encode(doc.text), tok.eod]
            if len(row) > max_len + 1 or len(plain) > max_len + 1:
                score.too_long += 1
                continue
            targets = meta_targets(mask)
            plain_targets = np.ones(len(plain), dtype=bool)
            plain_targets[0] = False
            score.documents += 1
            score.tokens_meta += int(targets.sum())
            score.tokens_plain += len(plain) - 1
            meta_nll = _nll(logits_fn, row, targets, banned)
            plain_nll = _nll(logits_fn, plain, plain_targets, ())
            score.nll_meta += meta_nll
            score.nll_plain += plain_nll
            score.diffs.append(meta_nll / max(targets.sum(), 1) - plain_nll / max(len(plain) - 1, 1))
        if score.documents or score.too_long:
            scores.append(score)
    return scores


def format_type_table(scores: Sequence[TypeScore]) -> str:
    """A Markdown table of the scores."""
    lines = [
        "| metadata | documents | tokens plain / meta | ppl plain | ppl with metadata | ratio "
        "| paired SE of log ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        lines.append(
            f"| {s.name} | {s.documents} | {s.tokens_plain:,} / {s.tokens_meta:,} | "
            f"{s.ppl_plain:.3f} | {s.ppl_meta:.3f} | {s.ppl_meta / s.ppl_plain:.4f} | "
            f"{s.paired_se:.4f} |"
        )
    return "\n".join(lines)
