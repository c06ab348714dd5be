"""Tokenizer registry: each type loads from a DataConfig, round-trips text and knows its EOD."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError
from megatron.data.tokenizers import TOKENIZERS, build_tokenizer
from megatron.data.train_tokenizer import TrainOptions, train_tokenizer
from tools.prepare_default_corpus import play_files

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--tokenizer-type", "--tokenizer-model", "--vocab-file", "--merge-file",
    "--vocab-size")

SAMPLES = [
    "To be, or not to be, that is the question:",
    "  leading spaces, trailing tabs\t\t",
    "lines\nand\r\nblank\n\nlines",
    "unseen characters: café, 日本語, 😀",
    "",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """About 30 KB of one play, as a text file."""
    with open(play_files()[0], encoding="utf-8") as f:
        text = f.read()[:30_000]
    path = tmp_path_factory.mktemp("corpus") / "play.txt"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def hf_json(corpus, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    options = TrainOptions(vocab_size=500)
    return train_tokenizer([corpus], str(out), kind="bpe", options=options).path


@pytest.fixture(scope="module")
def sp_model(corpus, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("sp") / "m"
    options = TrainOptions(vocab_size=500)
    return train_tokenizer([corpus], str(out), kind="sentencepiece", options=options).path


@pytest.fixture(scope="module")
def gpt2_files(hf_json, tmp_path_factory) -> tuple[str, str]:
    """vocab.json / merges.txt of the trained byte-level BPE, as GPT-2 ships them."""
    from tokenizers import Tokenizer

    out = tmp_path_factory.mktemp("gpt2")
    vocab, merges = Tokenizer.from_file(hf_json).model.save(str(out))
    return vocab, merges


@pytest.fixture
def configs(hf_json, sp_model, gpt2_files) -> dict[str, DataConfig]:
    vocab, merges = gpt2_files
    return {
        "hf": DataConfig(tokenizer_type="hf", tokenizer_model=hf_json),
        "sentencepiece": DataConfig(tokenizer_type="sentencepiece", tokenizer_model=sp_model),
        "gpt2bpe": DataConfig(tokenizer_type="gpt2bpe", vocab_file=vocab, merge_file=merges),
    }


def test_registry_names():
    assert {"byte", "null", "hf", "sentencepiece", "gpt2bpe"} <= set(TOKENIZERS)
    with pytest.raises(ConfigError, match="^--tokenizer-type 'nope': unknown tokenizer; known: byte, "):
        DataConfig(tokenizer_type="nope")


def test_byte_and_null_tokenizers_unchanged():
    byte = build_tokenizer(DataConfig(tokenizer_type="byte"))
    assert (byte.name, byte.vocab_size, byte.eod) == ("byte", 258, 256)
    assert byte.encode("café") == list("café".encode())
    assert byte.decode([*byte.encode("café"), byte.eod]) == "café"
    assert byte.encode_batch(["a", "bc"]) == [[97], [98, 99]]
    null = build_tokenizer(DataConfig(tokenizer_type="null", vocab_size=64))
    assert (null.vocab_size, null.eod, null.encode("1 2 3")) == (64, 63, [1, 2, 3])
    with pytest.raises(ValueError, match="--vocab-size: required"):
        build_tokenizer(DataConfig(tokenizer_type="null"))


@pytest.mark.parametrize("name", ["hf", "sentencepiece", "gpt2bpe"])
def test_round_trip_and_batch(configs, name):
    tok = build_tokenizer(configs[name])
    assert tok.name == name
    encoded = [tok.encode(text) for text in SAMPLES]
    for text, ids in zip(SAMPLES, encoded, strict=True):
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.eod not in ids
    assert tok.encode_batch(SAMPLES) == encoded
    # A learned vocabulary: common words are single tokens, far fewer ids than bytes.
    assert len(encoded[0]) < len(SAMPLES[0].encode()) / 2
    # EOD decodes to nothing, as the byte tokenizer's does.
    assert tok.decode([*encoded[0], tok.eod]) == SAMPLES[0]


def test_eod_ids(configs):
    from tokenizers import Tokenizer

    hf = build_tokenizer(configs["hf"])
    assert hf.eod == Tokenizer.from_file(configs["hf"].tokenizer_model).token_to_id("<|endoftext|>")
    assert hf.vocab_size == 500
    gpt2 = build_tokenizer(configs["gpt2bpe"])
    assert (gpt2.eod, gpt2.vocab_size) == (hf.eod, hf.vocab_size)
    sp = build_tokenizer(configs["sentencepiece"])
    assert sp.eod == sp._processor.piece_to_id("</s>") == 2
    assert sp.vocab_size == 500


def test_gpt2bpe_agrees_with_hf_on_real_text(configs):
    with open(play_files()[1], encoding="utf-8") as f:
        text = f.read()[:20_000]
    hf, gpt2 = build_tokenizer(configs["hf"]), build_tokenizer(configs["gpt2bpe"])
    ids = hf.encode(text)
    assert gpt2.encode(text) == ids
    assert gpt2.decode(ids) == text
    # The literal token text is the EOD id for both, as in GPT-2's own tokenizer.json.
    assert gpt2.encode("a<|endoftext|>b") == hf.encode("a<|endoftext|>b")
    assert gpt2.eod in gpt2.encode("a<|endoftext|>b")


def _word_level_json(tmp_path, specials: list[str]) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    return path


def test_hf_eod_falls_back_to_other_names(tmp_path):
    path = _word_level_json(tmp_path, ["<pad>", "</s>"])
    tok = build_tokenizer(DataConfig(tokenizer_type="hf", tokenizer_model=path))
    assert tok.eod == 4  # </s>, after the three words and <pad>
    assert tok.encode("hello world") == [1, 2]
    assert tok.vocab_size == 5


def test_hf_without_eod_token_is_an_error(tmp_path):
    path = _word_level_json(tmp_path, ["<pad>"])
    with pytest.raises(ConfigError, match=r"--tokenizer-model: .* has no end-of-document token"):
        build_tokenizer(DataConfig(tokenizer_type="hf", tokenizer_model=path))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tokenizer_type": "hf"}, r"--tokenizer-model: required with --tokenizer-type hf"),
        (
            {"tokenizer_type": "hf", "tokenizer_model": "missing/tokenizer.json"},
            r"--tokenizer-model: no such file 'missing/tokenizer.json' .*train_tokenizer.py",
        ),
        (
            {"tokenizer_type": "sentencepiece"},
            r"--tokenizer-model: required with --tokenizer-type sentencepiece",
        ),
        (
            {"tokenizer_type": "sentencepiece", "tokenizer_model": "missing.model"},
            r"--tokenizer-model: no such file 'missing.model'.*fix the path",
        ),
        (
            {"tokenizer_type": "gpt2bpe", "merge_file": "merges.txt"},
            r"--vocab-file: required with --tokenizer-type gpt2bpe",
        ),
        (
            {"tokenizer_type": "gpt2bpe", "vocab_file": "missing.json"},
            r"--vocab-file: no such file 'missing.json'",
        ),
    ],
)
def test_missing_files_name_the_flag(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_tokenizer(DataConfig(**kwargs))


def test_gpt2bpe_needs_merges_and_endoftext(gpt2_files, tmp_path):
    vocab, _ = gpt2_files
    with pytest.raises(ConfigError, match="--merge-file: required with --tokenizer-type gpt2bpe"):
        build_tokenizer(DataConfig(tokenizer_type="gpt2bpe", vocab_file=vocab))
    from tokenizers import Tokenizer, models

    plain = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    files = plain.model.save(str(tmp_path))
    cfg = DataConfig(tokenizer_type="gpt2bpe", vocab_file=files[0], merge_file=files[1])
    with pytest.raises(ConfigError, match=r"--vocab-file: .* has no <\|endoftext\|> token"):
        build_tokenizer(cfg)


def test_wrong_file_kind_is_a_config_error(hf_json, sp_model):
    with pytest.raises(ConfigError, match="--tokenizer-model: cannot read .* as a Hugging Face"):
        build_tokenizer(DataConfig(tokenizer_type="hf", tokenizer_model=sp_model))
    with pytest.raises(ConfigError, match="--tokenizer-model: cannot read .* as a SentencePiece"):
        build_tokenizer(DataConfig(tokenizer_type="sentencepiece", tokenizer_model=hf_json))


def test_sentencepiece_without_eos_is_an_error(corpus, tmp_path):
    import sentencepiece

    prefix = str(tmp_path / "noeos")
    sentencepiece.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=200, eos_id=-1, minloglevel=2
    )
    with pytest.raises(ConfigError, match="--tokenizer-model: .* has no EOS piece"):
        build_tokenizer(
            DataConfig(tokenizer_type="sentencepiece", tokenizer_model=prefix + ".model")
        )


def test_module_import_is_cheap(repo_root):
    code = (
        "import sys, megatron.data.tokenizers; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'tokenizers', 'sentencepiece', 'numpy')]; "
        "assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": repo_root}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root, env=env)
