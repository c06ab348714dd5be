"""Paired evaluation: every held-out document scored plain and with its metadata prefix.

Both conditions score the **same text tokens**: the text is tokenized once (``T``, EOD
appended), the plain row is ``T[:n]`` and the metadata row ``tok(prefix) + tok(text_sep) +
T[:n]`` (``text_sep`` is the template's " " between prefix and text), with ``n`` cut so the
metadata row fits the model's context; in both rows the targets are ``T[1:n]`` (the first text
token has no plain context, so neither condition scores it: the bigscience evaluation's rule).
Perplexities are token-weighted (``exp(sum nll / tokens)``) per metadata type: each key alone,
all keys together, and optionally a fixed user prefix for every document (MeCo's conditional
inference, e.g. ``URL: en.wikipedia.org\\n\\n``). Losses are summed over the selected target
positions only: no ``-inf * 0`` (the bigscience NaN bug) can arise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from megatron.data.tokenizers import Tokenizer
from megatron.metadata.render import PrefixFormat, render_document

DEFAULT_FORMAT = PrefixFormat()

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""``tokens [1, L] -> logits [1, L, V]`` (full vocabulary)."""


@dataclass(frozen=True, slots=True)
class Condition:
    """One evaluated metadata type.

    Attributes:
        name: Row label (a key, ``all``, or ``fixed prefix``).
        keys: Keys rendered into the prefix (documents lacking all of them are skipped).
        fixed_prefix: A prefix used for every document instead of its metadata.
    """

    name: str
    keys: tuple[str, ...] = ()
    fixed_prefix: str | None = None


@dataclass
class PairedScore:
    """Summed negative log-likelihoods of one condition over its documents."""

    name: str
    documents: int = 0
    too_long: int = 0  # documents whose prefix leaves no text token in the context
    tokens: int = 0
    nll_plain: float = 0.0
    nll_meta: float = 0.0

    @property
    def ppl_plain(self) -> float:
        """Token-weighted perplexity without prefixes."""
        return math.exp(self.nll_plain / max(self.tokens, 1))

    @property
    def ppl_meta(self) -> float:
        """Token-weighted perplexity with prefixes (same target tokens)."""
        return math.exp(self.nll_meta / max(self.tokens, 1))

    @property
    def ratio(self) -> float:
        """ppl_meta / ppl_plain (below 1: the metadata helps)."""
        return self.ppl_meta / self.ppl_plain

    def as_dict(self) -> dict[str, float | int | str]:
        """JSON row."""
        return {
            "type": self.name,
            "documents": self.documents,
            "prefix_too_long": self.too_long,
            "tokens": self.tokens,
            "ppl_plain": self.ppl_plain,
            "ppl_meta": self.ppl_meta,
            "ratio": self.ratio,
        }


@dataclass(frozen=True, slots=True)
class Pair:
    """The two rows of one document and where their shared targets start."""

    plain: list[int]
    meta: list[int]
    context: int  # tokens before T[0] in the metadata row

    @property
    def targets(self) -> int:
        """Scored tokens per row: ``T[1:n]``."""
        return len(self.plain) - 1


def build_pair(tok: Tokenizer, text: str, prefix: str, text_sep: str, max_len: int) -> Pair | None:
    """The paired rows of one document (None when no text token would be scored)."""
    text_ids = [*tok.encode(text), tok.eod]
    context = (tok.encode(prefix) if prefix else []) + (tok.encode(text_sep) if text_sep else [])
    n = min(len(text_ids), max_len + 1 - len(context))  # a row of L tokens gives L - 1 targets
    if n < 2:
        return None
    return Pair(plain=text_ids[:n], meta=context + text_ids[:n], context=len(context))


def _nll(logits_fn: LogitsFn, row: list[int], first: int) -> float:
    """Sum of -log p(row[j + 1] | row[:j + 1]) for j >= first, in float64."""
    ids = torch.tensor([row])
    logits = logits_fn(ids[:, :-1])[0, first:]
    losses = F.cross_entropy(logits.float(), ids[0, first + 1 :], reduction="none")
    return float(losses.double().sum())


def condition_prefix(
    cond: Condition, text: str, metadata: dict, template: str, fmt: PrefixFormat
) -> tuple[str, str] | None:
    """(prefix, text separator) of a document under ``cond`` (None: it lacks the keys)."""
    if cond.fixed_prefix is not None:
        return cond.fixed_prefix, ""
    rendered = render_document(text, metadata, cond.keys, template, fmt)
    if not rendered.prefix:
        return None
    return rendered.prefix, rendered.text[: len(rendered.text) - len(text)]


@torch.no_grad()
def evaluate_pairs(
    logits_fn: LogitsFn,
    tok: Tokenizer,
    records: Sequence[tuple[str, dict]],
    conditions: Sequence[Condition],
    max_len: int,
    template: str = "bigscience",
    fmt: PrefixFormat = DEFAULT_FORMAT,
) -> list[PairedScore]:
    """Score every document of every condition plain and with its prefix (one row each)."""
    scores = []
    for cond in conditions:
        score = PairedScore(cond.name)
        for text, metadata in records:
            found = condition_prefix(cond, text, metadata, template, fmt)
            if found is None:
                continue
            pair = build_pair(tok, text, found[0], found[1], max_len)
            if pair is None:
                score.too_long += 1
                continue
            score.documents += 1
            score.tokens += pair.targets
            score.nll_plain += _nll(logits_fn, pair.plain, 0)
            score.nll_meta += _nll(logits_fn, pair.meta, pair.context)
        scores.append(score)
    return scores


def default_conditions(keys: Sequence[str], fixed_prefix: str | None) -> list[Condition]:
    """Each key alone, all keys together (when several), and the fixed prefix (if given)."""
    conditions = [Condition(k, (k,)) for k in keys]
    if len(keys) > 1:
        conditions.append(Condition("all", tuple(keys)))
    if fixed_prefix is not None:
        conditions.append(Condition("fixed prefix", fixed_prefix=fixed_prefix))
    return conditions


def format_table(scores: Sequence[PairedScore]) -> str:
    """A Markdown table of the scores."""
    lines = [
        "| metadata | documents | tokens | ppl plain | ppl with prefix | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        lines.append(
            f"| {s.name} | {s.documents} | {s.tokens:,} | {s.ppl_plain:.3f} | "
            f"{s.ppl_meta:.3f} | {s.ratio:.4f} |"
        )
    return "\n".join(lines)
