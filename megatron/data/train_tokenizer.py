"""Train a tokenizer on raw text (the library behind ``tools/train_tokenizer.py``).

Two kinds, in the ``TRAINERS`` registry:

- ``bpe``: a GPT-2-style byte-level BPE with the Hugging Face ``tokenizers`` library. Every byte
  is in the base alphabet, so any text encodes without ``<unk>``; ``<|endoftext|>`` is the
  special end-of-document token. Writes a ``tokenizer.json`` that loads as ``--tokenizer-type hf``.
- ``sentencepiece``: a SentencePiece unigram (or BPE) model with byte fallback and identity
  normalization, so decoding gives back the exact input text. Its EOS piece (id 2) ends
  documents. Writes ``{prefix}.model`` (``--tokenizer-type sentencepiece``) and ``{prefix}.vocab``.

Inputs are read with ``iter_documents``, the reader ``tools/preprocess_data.py`` uses, so a
tokenizer is trained on exactly the text that is later tokenized. Outputs are written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from megatron.config.fields import ConfigError
from megatron.registry import Registry
from megatron.data.preprocess import iter_documents
from megatron.data.tokenizers import GPT2_EOD_TOKEN

log = logging.getLogger(__name__)

BYTE_ALPHABET_SIZE = 256
"""Base symbols of a byte-level BPE (and byte-fallback pieces of a SentencePiece model)."""

MAX_SENTENCE_CHARS = 4096
"""SentencePiece trains on lines; longer lines are cut at a space so none is skipped."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainOptions:
    """Knobs shared by the trainers.

    Attributes:
        vocab_size: Target vocabulary size, special tokens included.
        min_frequency: BPE: the fewest occurrences for a pair to be merged.
        sentencepiece_model_type: SentencePiece algorithm.
        max_sentences: SentencePiece: sample at most this many lines (0: all).
        show_progress: Let the library draw its progress bars.
    """

    vocab_size: int
    min_frequency: int = 2
    sentencepiece_model_type: Literal["unigram", "bpe"] = "unigram"
    max_sentences: int = 0
    show_progress: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainedModel:
    """A trained tokenizer not yet on disk.

    Attributes:
        vocab_size: Ids in its vocabulary.
        save: ``save(model_path)`` writes the model file (and any companions beside it).
    """

    vocab_size: int
    save: Callable[[str], None]


TrainFn = Callable[[Iterable[str], TrainOptions], TrainedModel]


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainerSpec:
    """One registered trainer.

    Attributes:
        name: ``--type`` value.
        tokenizer_type: The ``--tokenizer-type`` that loads the result.
        model_path: ``--output`` -> the model file written.
        train: ``(texts, options) -> TrainedModel``, still in memory.
    """

    name: str
    tokenizer_type: str
    model_path: Callable[[str], str]
    train: TrainFn


TRAINERS: Registry[TrainerSpec] = Registry("tokenizer kind", "--type")
"""``tools/train_tokenizer.py --type`` value -> spec."""


def register_trainer(
    name: str, *, tokenizer_type: str, model_path: Callable[[str], str]
) -> Callable[[TrainFn], TrainFn]:
    """Decorator registering a training function under ``name``."""

    def decorate(train: TrainFn) -> TrainFn:
        TRAINERS.add(name, TrainerSpec(
            name=name, tokenizer_type=tokenizer_type, model_path=model_path, train=train
        ))
        return train

    return decorate


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainedTokenizer:
    """What ``train_tokenizer`` wrote.

    Attributes:
        path: The model file (pass as ``--tokenizer-model``).
        tokenizer_type: The ``--tokenizer-type`` that loads it.
        vocab_size: Ids in the trained vocabulary.
        documents: Documents (text fields) read.
        seconds: Wall time.
    """

    path: str
    tokenizer_type: str
    vocab_size: int
    documents: int
    seconds: float


def _replace_atomically(write: Callable[[str], None], path: str) -> None:
    """Call ``write(tmp_path)`` and rename the result to ``path`` only if it succeeded."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _bpe_path(output: str) -> str:
    return output if output.endswith(".json") else os.path.join(output, "tokenizer.json")


@register_trainer("bpe", tokenizer_type="hf", model_path=_bpe_path)
def train_byte_level_bpe(texts: Iterable[str], options: TrainOptions) -> TrainedModel:
    """Train a GPT-2-style byte-level BPE, saved as a ``tokenizer.json``.

    Returns:
        The model and its ``save``.

    Raises:
        ConfigError: ``--vocab-size`` too small for the byte alphabet and the EOD token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    smallest = BYTE_ALPHABET_SIZE + 1
    if options.vocab_size < smallest:
        raise ConfigError(
            f"--vocab-size: a byte-level BPE needs at least {smallest} ids (256 bytes + "
            f"{GPT2_EOD_TOKEN}), got {options.vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=options.vocab_size,
        min_frequency=options.min_frequency,
        special_tokens=[GPT2_EOD_TOKEN],
        # All 256 byte symbols, seen or not, so no text ever needs an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=options.show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return TrainedModel(
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        save=lambda path: _replace_atomically(tokenizer.save, path),
    )


def _sentencepiece_path(output: str) -> str:
    return output if output.endswith(".model") else output + ".model"


def _sentences(texts: Iterable[str]) -> Iterator[str]:
    """Non-blank lines of ``texts``, over-long ones cut at a space (SentencePiece skips them)."""
    for text in texts:
        for line in text.splitlines():
            while len(line) > MAX_SENTENCE_CHARS:
                cut = line.rfind(" ", 1, MAX_SENTENCE_CHARS)
                cut = cut if cut > 0 else MAX_SENTENCE_CHARS
                yield line[:cut]
                line = line[cut:]
            if line.strip():
                yield line


@register_trainer("sentencepiece", tokenizer_type="sentencepiece", model_path=_sentencepiece_path)
def train_sentencepiece(texts: Iterable[str], options: TrainOptions) -> TrainedModel:
    """Train a SentencePiece model, saved as ``.model`` with a ``.vocab`` listing beside it.

    Returns:
        The model and its ``save``.

    Raises:
        ConfigError: ``--vocab-size`` is too small for the characters and byte pieces.
    """
    import sentencepiece

    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=_sentences(texts),
            model_writer=model,
            model_type=options.sentencepiece_model_type,
            vocab_size=options.vocab_size,
            # Exact round trips: no NFKC, no whitespace folding, unseen bytes as <0x..> pieces.
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            byte_fallback=True,
            # Tiny corpora cannot always fill the vocabulary; stop short instead of failing.
            hard_vocab_limit=False,
            input_sentence_size=options.max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=4 * MAX_SENTENCE_CHARS,  # bytes; a char is at most 4
            minloglevel=0 if options.show_progress else 2,
        )
    except RuntimeError as e:
        # The library reports an undersized vocabulary only as an internal check failure.
        if "vocab" in str(e).lower():
            raise ConfigError(f"--vocab-size: SentencePiece cannot train: {e}") from None
        raise
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())

    def write_model(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(model.getvalue())

    def write_vocab(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for i in range(processor.get_piece_size()):
                f.write(f"{processor.id_to_piece(i)}\t{processor.get_score(i)}\n")

    def save(path: str) -> None:
        _replace_atomically(write_vocab, path.removesuffix(".model") + ".vocab")
        _replace_atomically(write_model, path)

    return TrainedModel(vocab_size=int(processor.get_piece_size()), save=save)


class _GuardedTexts:
    """Counts the texts handed to a trainer and holds back a reader error.

    The trainers consume the iterator inside C++ / Rust, which wrap a Python exception in their
    own (losing the file:line message) or just stop. So the error is kept here, the trainer sees
    the end of its input, and ``train_tokenizer`` re-raises it before anything is saved.
    """

    def __init__(self, texts: Iterator[str]):
        self._texts = texts
        self.count = 0
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for text in self._texts:
                self.count += 1
                yield text
        except Exception as e:  # re-raised by train_tokenizer, after training returns
            self.error = e


def train_tokenizer(
    inputs: Sequence[str],
    output: str,
    *,
    kind: str,
    options: TrainOptions,
    json_keys: Sequence[str] = ("text",),
) -> TrainedTokenizer:
    """Train a ``kind`` tokenizer on the documents of ``inputs`` and write it under ``output``.

    Args:
        inputs: jsonl(.gz) or plain-text files, as for ``tools/preprocess_data.py``.
        output: ``bpe``: a ``.json`` file, or a directory for ``tokenizer.json``;
            ``sentencepiece``: a prefix for ``{prefix}.model`` / ``{prefix}.vocab``.
        kind: A ``TRAINERS`` name.
        options: Vocabulary size and trainer knobs.
        json_keys: Text fields of jsonl records (every field is trained on).

    Returns:
        Where the model is and how to load it.

    Raises:
        ConfigError: Unknown kind, missing inputs, no text, or an unusable ``--vocab-size``.
        ValueError: A malformed jsonl line (the message names file:line).
    """
    spec = TRAINERS.get(kind)
    missing = [p for p in inputs if not os.path.isfile(p)]
    if missing:
        raise ConfigError(f"--input: no such file(s) {missing}")
    path = spec.model_path(output)
    started = time.perf_counter()
    stream = (text for document in iter_documents(inputs, json_keys) for text in document.values())
    # Look at the first document before training, so empty inputs write no model.
    first = next(stream, None)
    if first is None:
        raise ConfigError(f"--input: no documents in {list(inputs)}")
    texts = _GuardedTexts(itertools.chain([first], stream))
    try:
        model = spec.train(texts, options)
    except Exception:
        # A trainer that fails on truncated input: the reader's error is the cause to report.
        if texts.error is not None:
            raise texts.error from None
        raise
    if texts.error is not None:
        raise texts.error
    model.save(path)
    vocab_size = model.vocab_size
    seconds = time.perf_counter() - started
    log.info(
        "trained %s (%d ids) on %d documents in %.1f s", path, vocab_size, texts.count, seconds
    )
    return TrainedTokenizer(
        path=path,
        tokenizer_type=spec.tokenizer_type,
        vocab_size=vocab_size,
        documents=texts.count,
        seconds=seconds,
    )
