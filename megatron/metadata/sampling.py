"""Which metadata an example gets: drawn from (seed, epoch, document) only.

The BigScience v2 rules: with ``--random-sample-metadata``, html is first dropped with
probability ``1 - html_overall_sample_rate``; among the weighted keys the example has (n of
them) ``k ~ U{1..n}`` are kept, chosen without replacement with probability proportional to
their weights (keys without a weight are always kept); then the example gets metadata at all
with probability ``metadata_probability``. Every draw comes from a generator seeded by
``(seed, epoch, document index)``, so a re-run or a resumed job draws the same, another epoch
draws anew, and the worker count or sharding changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from megatron.config.fields import ConfigError
from megatron.registry import Registry


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """Per-example metadata draws.

    Attributes:
        probability: Chance an example gets metadata at all (``--metadata-probability``).
        random_sample: Keep a random subset of the example's types (``--random-sample-metadata``).
        weights: Key -> weight for that subset (``--random-sample-metadata-weights``).
        html_rate: Chance html survives before the subset is drawn (``--html-overall-sample-rate``).
        seed: Seeds every draw (``--metadata-seed``).
    """

    probability: float = 1.0
    random_sample: bool = False
    weights: Mapping[str, float] = field(default_factory=dict)
    html_rate: float = 1.0
    seed: int = 1234

    def __post_init__(self) -> None:
        for flag, value in (
            ("--metadata-probability", self.probability),
            ("--html-overall-sample-rate", self.html_rate),
        ):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{flag}: must be in [0, 1], got {value}")
        if self.random_sample and not self.weights:
            raise ConfigError(
                "--random-sample-metadata: give --random-sample-metadata-weights, e.g. html=1,title=1"
            )
        if not self.random_sample and (self.weights or self.html_rate != 1.0):
            raise ConfigError(
                "--random-sample-metadata-weights/--html-overall-sample-rate: only used with "
                "--random-sample-metadata; add it or drop them"
            )
        bad = {k: w for k, w in self.weights.items() if not w > 0}
        if bad:
            raise ConfigError(f"--random-sample-metadata-weights: weights must be > 0, got {bad}")
        if self.seed < 0:
            raise ConfigError(f"--metadata-seed: must be >= 0, got {self.seed}")


def parse_weights(text: str, flag: str = "--random-sample-metadata-weights") -> dict[str, float]:
    """``html=1,timestamp=11.3`` -> ``{"html": 1.0, "timestamp": 11.3}``."""
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ConfigError(f"{flag}: expected key=number pairs like html=1,title=2, got {item!r}")
    return out


def parse_mapping(text: str, flag: str) -> dict[str, str]:
    """``html=<HTML>,entity_paragraph=entity`` -> a dict of strings."""
    out: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag}: expected key=text pairs, got {item!r}")
        out[key.strip()] = value
    return out


def draw_keys(keys: Sequence[str], opts: SamplingOptions, epoch: int, index: int) -> list[str] | None:
    """The keys example ``index`` keeps in ``epoch`` (None: no metadata at all this time).

    Args:
        keys: Keys the example has (in the metadata list's order).
        opts: Sampling options.
        epoch: Epoch (or pre-drawn variant) number.
        index: Document index in its dataset.
    """
    rng = np.random.default_rng([opts.seed, epoch, index])
    u_metadata, u_html = rng.random(2)
    kept = list(keys)
    if opts.random_sample:
        weighted = [k for k in kept if k in opts.weights]
        if "html" in weighted and u_html >= opts.html_rate:
            weighted.remove("html")
        if weighted:
            w = np.array([opts.weights[k] for k in weighted], dtype=np.float64)
            count = int(rng.integers(1, len(weighted) + 1))
            picked = set(rng.choice(len(weighted), count, replace=False, p=w / w.sum()).tolist())
            weighted = [k for i, k in enumerate(weighted) if i in picked]
        kept = [k for k in kept if k not in opts.weights or k in weighted]
    if u_metadata >= opts.probability:
        return None
    return kept


TokenSpans = Callable[[object, str], "tuple[list[int], list[tuple[int, int]]]"]
TOKEN_SPANS: Registry[TokenSpans] = Registry("tokenizer with character offsets", "--tokenizer-type")
"""Tokenizer name -> ``(tokenizer, text) -> (ids, character span of each token)``."""


def _byte_spans(tok: object, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    data = text.encode("utf-8")
    spans = []
    for i, ch in enumerate(text):
        spans += [(i, i + 1)] * len(ch.encode("utf-8"))
    return list(data), spans


def _hf_spans(tok: object, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    encoding = tok._tokenizer.encode(text, add_special_tokens=False)  # noqa: SLF001
    return list(encoding.ids), [tuple(o) for o in encoding.offsets]


TOKEN_SPANS.add("byte", _byte_spans)
TOKEN_SPANS.add("hf", _hf_spans)
TOKEN_SPANS.add("gpt2bpe", _hf_spans)


def encode_with_mask(tok, text: str, char_mask: Sequence[bool]) -> tuple[list[int], np.ndarray]:  # noqa: ANN001
    """Token ids of ``text`` and a bool per token: True if any of its characters is metadata.

    Raises:
        ConfigError: The tokenizer cannot map tokens to characters.
    """
    if tok.name not in TOKEN_SPANS:
        raise ConfigError(
            f"--tokenizer-type {tok.name}: local metadata masks need token character offsets "
            f"(supported: {TOKEN_SPANS.names()}); or add --treat-local-metadata-as-regular-text"
        )
    ids, spans = TOKEN_SPANS[tok.name](tok, text)
    marked = np.concatenate([[0], np.cumsum(np.asarray(char_mask, dtype=np.int64))])
    mask = np.array([marked[e] - marked[s] > 0 for s, e in spans], dtype=bool)
    return ids, mask
