"""The run's tokenizer as a ``tokenizer.json`` that ``transformers.AutoTokenizer`` loads.

One registered writer per ``--tokenizer-type``; each builds a Hugging Face ``tokenizers``
pipeline that gives the ids our own tokenizer gives (tested on Shakespeare text), saves it
with a ``tokenizer_config.json`` (``PreTrainedTokenizerFast``, no BOS/EOS added on encode) and
returns the end-of-document id for ``config.json``'s ``eos_token_id``:

- ``hf``: the run's ``tokenizer.json``, copied.
- ``gpt2bpe``: the byte-level BPE our loader builds from ``vocab.json``/``merges.txt`` (both
  files are copied too, for ``GPT2Tokenizer``).
- ``sentencepiece``: the ``.model`` rewritten as an equivalent pipeline: the unigram pieces and
  scores, or BPE with merges recovered from the piece ranks; byte fallback; the dummy ``▁``
  prefix. Exact for the models ``tools/train_tokenizer.py`` trains (identity normalization,
  extra whitespace kept); other normalizations are refused (no tokenizer written, a warning).
  The ``.model`` is copied as ``tokenizer.model``.
- ``byte``: our byte tokenizer (ids 0-255 are the UTF-8 bytes, 256 ``<|endoftext|>``, 257
  ``<|mask|>``) as a byte-level BPE without merges: GPT-2's printable byte alphabet with byte b
  at id b, so every text encodes to exactly its UTF-8 bytes and decodes back losslessly.

Files are checked against the SHA-256 recorded at training time; a missing or changed file
exports no tokenizer (with a warning) rather than a wrong one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

from megatron.data.tokenizers import GPT2_EOD_TOKEN, file_sha256
from megatron.registry import Registry

log = logging.getLogger(__name__)

TokenizerWriter = Callable[[list[str], str], tuple[Any, str | None]]
"""``(files, out_dir) -> (tokenizers.Tokenizer, eod token)``; may copy extra files to out_dir."""

TOKENIZER_WRITERS: Registry[TokenizerWriter] = Registry("tokenizer export", "--tokenizer-type")
"""The run's ``--tokenizer-type`` -> writer (every entry is registered in this module)."""

BYTE_SPECIALS = ("<|endoftext|>", "<|mask|>")
"""Our byte tokenizer's ids 256 (end of document) and 257 (mask)."""


def register_tokenizer_writer(name: str) -> Callable[[TokenizerWriter], TokenizerWriter]:
    """Decorator registering the writer for ``--tokenizer-type name``."""

    return TOKENIZER_WRITERS.register(name)


def _checked_files(info: dict[str, Any]) -> list[str] | None:
    files, saved = info.get("files") or [], info.get("sha256") or []
    for i, path in enumerate(files):
        if not os.path.isfile(path):
            log.warning("hf export: tokenizer file %s is missing; no tokenizer exported", path)
            return None
        if i < len(saved) and saved[i] is not None and file_sha256(path) != saved[i]:
            log.warning("hf export: %s changed since training; no tokenizer exported", path)
            return None
    return files


def write_tokenizer(info: dict[str, Any], out: str, model_max_length: int,
                    vocab_size: int) -> tuple[str | None, int | None]:
    """Write the tokenizer of run metadata ``info`` (``{"type", "files", "sha256"}``) into ``out``.

    A tokenizer whose vocabulary is not the model's ``vocab_size`` (a ``--mock-data`` run keeps
    the default ``byte`` type) is not written.

    Returns:
        ``(tokenizer type or None when none was written, end-of-document id or None)``.
    """
    kind = info.get("type")
    if kind not in TOKENIZER_WRITERS:
        log.warning("hf export: no tokenizer export for --tokenizer-type %s", kind)
        return None, None
    files = _checked_files(info)
    if files is None:
        return None, None
    result = TOKENIZER_WRITERS[kind](files, out)
    if result is None:
        return None, None
    tokenizer, eod = result
    size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    if size != vocab_size:
        log.warning("hf export: the %s tokenizer has %d ids, the model %d; no tokenizer exported",
                    kind, size, vocab_size)
        return None, None
    tokenizer.save(os.path.join(out, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False}
    if eod is not None:
        config["eos_token"] = eod
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return kind, None if eod is None else tokenizer.token_to_id(eod)


@register_tokenizer_writer("hf")
def _hf(files: list[str], out: str) -> tuple[Any, str | None]:
    from tokenizers import Tokenizer

    from megatron.data.tokenizers import find_eod_token

    tokenizer = Tokenizer.from_file(files[0])
    return tokenizer, find_eod_token(tokenizer)


@register_tokenizer_writer("gpt2bpe")
def _gpt2bpe(files: list[str], out: str) -> tuple[Any, str | None]:
    from megatron.config.data import DataConfig
    from megatron.data.tokenizers import build_tokenizer

    vocab, merges = files
    ours = build_tokenizer(DataConfig(tokenizer_type="gpt2bpe", vocab_file=vocab, merge_file=merges))
    shutil.copyfile(vocab, os.path.join(out, "vocab.json"))
    shutil.copyfile(merges, os.path.join(out, "merges.txt"))
    return ours._tokenizer, GPT2_EOD_TOKEN


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to
    themselves; the other 68 bytes to code points 256 and up, in byte order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def byte_tokenizer() -> Any:
    """Our ``byte`` tokenizer as a ``tokenizers.Tokenizer`` (see the module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: b for b, char in bytes_to_unicode().items()}
    tokenizer = Tokenizer(models.BPE(vocab, [], ignore_merges=True))
    # No regex split and no prefix space: the text becomes one run of byte characters.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in BYTE_SPECIALS])
    return tokenizer


@register_tokenizer_writer("byte")
def _byte(files: list[str], out: str) -> tuple[Any, str | None]:
    return byte_tokenizer(), BYTE_SPECIALS[0]


@register_tokenizer_writer("sentencepiece")
def _sentencepiece(files: list[str], out: str) -> tuple[Any, str | None] | None:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(files[0], "rb") as f:
        proto.ParseFromString(f.read())
    ns = proto.normalizer_spec
    if ns.name != "identity" or ns.remove_extra_whitespaces or len(ns.precompiled_charsmap):
        log.warning("hf export: %s normalizes text (%s, remove_extra_whitespaces=%s), which the "
                    "export cannot reproduce exactly; no tokenizer exported", files[0], ns.name,
                    ns.remove_extra_whitespaces)
        return None
    shutil.copyfile(files[0], os.path.join(out, "tokenizer.model"))
    tokenizer = _sentencepiece_pipeline(proto)
    eos = proto.trainer_spec.eos_id
    return tokenizer, proto.pieces[eos].piece if eos >= 0 else None


def _sentencepiece_pipeline(proto: Any) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    normal, control, unigram = 1, 3, 1
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    fallback = proto.trainer_spec.byte_fallback
    if proto.trainer_spec.model_type == unigram:
        model = models.Unigram([(p.piece, p.score) for p in proto.pieces], proto.trainer_spec.unk_id,
                               byte_fallback=fallback)
    else:
        # SentencePiece BPE keeps no merge list: a piece's rank is its merge priority, so every
        # split of a piece into two known pieces is a merge of that rank.
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        merges = sorted((rank, vocab[piece[:i]], vocab[piece[i:]], piece[:i], piece[i:])
                        for piece, rank in vocab.items() if proto.pieces[rank].type == normal
                        for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab)
        model = models.BPE(vocab, [(a, b) for *_, a, b in merges], unk_token=unk,
                           byte_fallback=fallback, fuse_unk=True)
    tokenizer = Tokenizer(model)
    steps = [normalizers.Prepend("▁")] if proto.normalizer_spec.add_dummy_prefix else []
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    strip = [decoders.Strip(" ", 1, 0)] if proto.normalizer_spec.add_dummy_prefix else []
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                           decoders.Fuse(), *strip])
    tokenizer.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                                  for p in proto.pieces if p.type == control])
    return tokenizer
