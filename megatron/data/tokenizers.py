"""The tokenizer registry: ``--tokenizer-type NAME`` -> a ``TokenizerSpec``.

A tokenizer maps text to ids and knows its vocabulary size and end-of-document id. Loading is
lazy and cheap enough for ``--dry-run`` (no torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from megatron.config.data import DataConfig


class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    name: str
    vocab_size: int
    eod: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no end-of-document token)."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenizerSpec:
    """One registered tokenizer: ``load(data_cfg) -> Tokenizer``."""

    name: str
    load: Callable[[DataConfig], Tokenizer]


TOKENIZERS: dict[str, TokenizerSpec] = {}


def register_tokenizer(name: str) -> Callable[[Callable[[DataConfig], Tokenizer]], Callable]:
    """Decorator registering a loader under ``name``."""

    def decorate(load: Callable[[DataConfig], Tokenizer]) -> Callable[[DataConfig], Tokenizer]:
        TOKENIZERS[name] = TokenizerSpec(name=name, load=load)
        return load

    return decorate


def build_tokenizer(cfg: DataConfig) -> Tokenizer:
    """Load the tokenizer named by ``--tokenizer-type``.

    Raises:
        KeyError: Unknown name; the message lists the known ones.
    """
    if cfg.tokenizer_type not in TOKENIZERS:
        raise KeyError(f"unknown tokenizer {cfg.tokenizer_type!r}; known: {sorted(TOKENIZERS)}")
    return TOKENIZERS[cfg.tokenizer_type].load(cfg)


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0-255, end-of-document 256, a reserved mask id 257.

    Needs no model file, so the bundled demo and the tests run anywhere.
    """

    name = "byte"
    eod = 256
    mask = 257
    vocab_size = 258

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text``."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """UTF-8 text of the byte ids (special ids dropped, invalid bytes replaced)."""
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


@register_tokenizer("byte")
def _load_byte(cfg: DataConfig) -> Tokenizer:
    return ByteTokenizer()


class NullTokenizer:
    """Ids only, for ``--mock-data``: the vocabulary is ``--vocab-size``; the last id is EOD."""

    name = "null"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.eod = vocab_size - 1

    def encode(self, text: str) -> list[int]:
        """Whitespace-separated integers."""
        return [int(t) for t in text.split()]

    def decode(self, ids: list[int]) -> str:
        """Ids joined by spaces."""
        return " ".join(str(i) for i in ids)


@register_tokenizer("null")
def _load_null(cfg: DataConfig) -> Tokenizer:
    if cfg.vocab_size is None:
        raise ValueError("--vocab-size: required with --tokenizer-type null")
    return NullTokenizer(cfg.vocab_size)
