"""The tokenizer registry: ``--tokenizer-type NAME`` -> a ``TokenizerSpec``.

A tokenizer maps text to ids and knows its vocabulary size and end-of-document id. Loading is
lazy and cheap enough for ``--dry-run``: this module imports neither torch nor the tokenizer
libraries; ``sentencepiece`` and ``tokenizers`` are imported inside the loaders that need them.

Registered names:

- ``byte``: UTF-8 bytes, no model file (the demo corpus and the tests).
- ``null``: integer ids for ``--mock-data``.
- ``hf``: a Hugging Face ``tokenizers`` ``tokenizer.json`` (``--tokenizer-model``).
- ``sentencepiece``: a SentencePiece ``.model`` (``--tokenizer-model``).
- ``gpt2bpe``: GPT-2 byte-level BPE from ``--vocab-file vocab.json --merge-file merges.txt``.

``tools/train_tokenizer.py`` trains models that load as ``hf`` and ``sentencepiece``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from megatron.config.fields import ConfigError
from megatron.registry import Registry

EOD_TOKEN_NAMES: tuple[str, ...] = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")
"""End-of-document token spellings looked up in a tokenizer.json, in order of preference."""

GPT2_EOD_TOKEN = "<|endoftext|>"
"""GPT-2's end-of-document token; ``tools/train_tokenizer.py`` gives BPE models the same."""


def file_sha256(path: str) -> str | None:
    """SHA-256 of a file's content (None when it does not exist): identifies tokenizer files."""
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    name: str
    vocab_size: int
    eod: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no end-of-document token)."""
        ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each of ``texts``; equal to ``[encode(t) for t in texts]``."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``."""
        ...


class TokenizerBase:
    """Default ``encode_batch`` (a loop over ``encode``) for tokenizers without a fast path."""

    def encode(self, text: str) -> list[int]:  # pragma: no cover - overridden
        """Token ids of ``text``."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, one ``encode`` call at a time."""
        return [self.encode(text) for text in texts]


class TokenizerSettings(Protocol):
    """What loaders read of the data settings; ``megatron.config.data.DataConfig`` satisfies it
    (registries never import config classes)."""

    tokenizer_type: str
    tokenizer_model: str | None
    vocab_file: str | None
    merge_file: str | None
    vocab_size: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenizerSpec:
    """One registered tokenizer: ``load(data_cfg) -> Tokenizer``."""

    name: str
    load: Callable[[TokenizerSettings], Tokenizer]


TOKENIZERS: Registry[TokenizerSpec] = Registry("tokenizer", "--tokenizer-type")
"""``--tokenizer-type`` value -> loader (every entry is registered in this module)."""


def register_tokenizer(name: str) -> Callable[[Callable[[TokenizerSettings], Tokenizer]], Callable]:
    """Decorator registering a loader under ``name``."""

    def decorate(load: Callable[[TokenizerSettings], Tokenizer]) -> Callable[[TokenizerSettings], Tokenizer]:
        TOKENIZERS.add(name, TokenizerSpec(name=name, load=load))
        return load

    return decorate


def build_tokenizer(cfg: TokenizerSettings) -> Tokenizer:
    """Load the tokenizer named by ``--tokenizer-type``.

    Raises:
        ConfigError: Unknown name (``--tokenizer-type``, with the known ones); a model file is missing, unreadable or lacks an end-of-document token.
    """
    return TOKENIZERS.get(cfg.tokenizer_type).load(cfg)


TRAIN_HINT = "train one with tools/train_tokenizer.py or fix the path"
"""How to fix a missing ``--tokenizer-model``."""


DIRECTORY_FILES = {"hf": "tokenizer.json", "sentencepiece": "tokenizer.model"}
"""The file a ``--tokenizer-model`` directory (an HF model or an import of one) holds per type."""


def _require_file(
    path: str | None, flag: str, tokenizer_type: str, what: str, hint: str = TRAIN_HINT
) -> str:
    """``path`` if it names a file (or a directory holding the type's ``DIRECTORY_FILES``
    entry), else a ``ConfigError`` saying which flag to fix and how."""
    if path is None:
        raise ConfigError(
            f"{flag}: required with --tokenizer-type {tokenizer_type} (path to {what})"
        )
    if os.path.isdir(path) and tokenizer_type in DIRECTORY_FILES:
        inside = os.path.join(path, DIRECTORY_FILES[tokenizer_type])
        if not os.path.isfile(inside):
            raise ConfigError(f"{flag}: directory {path!r} holds no {DIRECTORY_FILES[tokenizer_type]} "
                              f"(expected {what})")
        return inside
    if not os.path.isfile(path):
        raise ConfigError(f"{flag}: no such file {path!r} (expected {what}; {hint})")
    return path


class ByteTokenizer(TokenizerBase):
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
def _load_byte(cfg: TokenizerSettings) -> Tokenizer:
    return ByteTokenizer()


class NullTokenizer(TokenizerBase):
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
def _load_null(cfg: TokenizerSettings) -> Tokenizer:
    if cfg.vocab_size is None:
        raise ConfigError("--vocab-size: required with --tokenizer-type null")
    return NullTokenizer(cfg.vocab_size)


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` (used by ``hf`` and ``gpt2bpe``).

    Encoding never adds the post-processor's special tokens (BOS and the like): documents are
    separated by ``eod`` alone, appended by the preprocessor. Decoding drops special tokens.

    Args:
        tokenizer: The loaded ``tokenizers.Tokenizer``.
        name: Registry name reported by ``name``.
        eod: End-of-document id.
    """

    def __init__(self, tokenizer: Any, *, name: str, eod: int):
        self._tokenizer = tokenizer
        self.name = name
        self.eod = eod
        # Ids of added tokens can sit above the model vocabulary and leave gaps, so the size that
        # embeddings and the on-disk dtype must cover is the largest id + 1, not the token count.
        self.vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, encoded in parallel by the Rust library."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` without special tokens."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)


def find_eod_token(tokenizer: Any) -> str | None:
    """The first of ``EOD_TOKEN_NAMES`` among a ``tokenizers.Tokenizer``'s added tokens."""
    added = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    return next((name for name in EOD_TOKEN_NAMES if name in added), None)


@register_tokenizer("hf")
def _load_hf(cfg: TokenizerSettings) -> Tokenizer:
    from tokenizers import Tokenizer as RustTokenizer

    path = _require_file(cfg.tokenizer_model, "--tokenizer-model", "hf", "a tokenizer.json")
    try:
        tokenizer = RustTokenizer.from_file(path)
    except Exception as e:  # the library raises a bare Exception on malformed files
        raise ConfigError(
            f"--tokenizer-model: cannot read {path!r} as a Hugging Face tokenizer.json: {e}"
        ) from None
    eod_token = find_eod_token(tokenizer)
    if eod_token is None:
        raise ConfigError(
            f"--tokenizer-model: {path!r} has no end-of-document token; expected one of "
            f"{list(EOD_TOKEN_NAMES)} among its special tokens"
        )
    return HFTokenizer(tokenizer, name="hf", eod=tokenizer.token_to_id(eod_token))


@register_tokenizer("gpt2bpe")
def _load_gpt2bpe(cfg: TokenizerSettings) -> Tokenizer:
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    hint = "fix the path, or use --tokenizer-type hf with a tokenizer.json"
    vocab = _require_file(cfg.vocab_file, "--vocab-file", "gpt2bpe", "a GPT-2 vocab.json", hint)
    merges = _require_file(cfg.merge_file, "--merge-file", "gpt2bpe", "a GPT-2 merges.txt", hint)
    try:
        model = models.BPE.from_file(vocab, merges)
    except Exception as e:  # the library raises a bare Exception on malformed files
        raise ConfigError(
            f"--vocab-file: cannot build a BPE from {vocab!r} and --merge-file {merges!r}: {e}"
        ) from None
    tokenizer = RustTokenizer(model)
    # GPT-2: bytes mapped to printable characters, its split regex, no prefix space.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    eod = tokenizer.token_to_id(GPT2_EOD_TOKEN)
    if eod is None:
        raise ConfigError(f"--vocab-file: {vocab!r} has no {GPT2_EOD_TOKEN} token")
    # As in GPT-2's tokenizer.json: the literal text encodes to the EOD id and decoding drops it.
    tokenizer.add_special_tokens([GPT2_EOD_TOKEN])
    return HFTokenizer(tokenizer, name="gpt2bpe", eod=eod)


class SentencePieceTokenizer:
    """A SentencePiece model; its ``eos`` piece is the end-of-document token.

    Args:
        processor: The loaded ``sentencepiece.SentencePieceProcessor``.
    """

    name = "sentencepiece"

    def __init__(self, processor: Any):
        self._processor = processor
        self.vocab_size = int(processor.get_piece_size())
        self.eod = int(processor.eos_id())

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS)."""
        return self._processor.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, encoded by the C++ library's thread pool."""
        return self._processor.encode(list(texts))

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` (control pieces such as EOS decode to nothing)."""
        return self._processor.decode(list(ids))


@register_tokenizer("sentencepiece")
def _load_sentencepiece(cfg: TokenizerSettings) -> Tokenizer:
    import sentencepiece

    path = _require_file(
        cfg.tokenizer_model, "--tokenizer-model", "sentencepiece", "a SentencePiece .model"
    )
    try:
        processor = sentencepiece.SentencePieceProcessor(model_file=path)
    except (OSError, RuntimeError) as e:
        raise ConfigError(
            f"--tokenizer-model: cannot read {path!r} as a SentencePiece model: {e}"
        ) from None
    if processor.eos_id() < 0:
        raise ConfigError(
            f"--tokenizer-model: {path!r} has no EOS piece to end documents with "
            "(retrain it with an eos_id, e.g. with tools/train_tokenizer.py)"
        )
    return SentencePieceTokenizer(processor)
