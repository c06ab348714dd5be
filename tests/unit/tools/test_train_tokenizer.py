"""tools/train_tokenizer.py: trained models load through the registry and round-trip text."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError
from megatron.data.tokenizers import build_tokenizer
from megatron.data.train_tokenizer import TrainOptions, train_tokenizer
from tools import train_tokenizer as cli
from tools.prepare_default_corpus import play_files

HELD_OUT = "Whither, good Hamlet?  Naïve café — 日本語\n\tIndented,   spaced;\r\nend."


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[str, str]:
    """A plain-text play excerpt and a gzipped jsonl of another, under the key ``content``."""
    root = tmp_path_factory.mktemp("inputs")
    first, second = play_files()[:2]
    with open(first, encoding="utf-8") as f:
        (root / "a.txt").write_text(f.read()[:20_000], encoding="utf-8")
    with open(second, encoding="utf-8") as f:
        paragraphs = [p for p in f.read()[:20_000].split("\n\n") if p.strip()]
    with gzip.open(root / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"content": p}) + "\n" for p in paragraphs)
    return str(root / "a.txt"), str(root / "b.jsonl.gz")


def test_bpe_cli_writes_tokenizer_json_that_loads_as_hf(inputs, tmp_path, capsys):
    out = tmp_path / "bpe"
    argv = ["--type", "bpe", "--vocab-size", "600", "--output", str(out)]
    assert cli.main([*argv, "--input", *inputs, "--json-keys", "content"]) == 0
    path = str(out / "tokenizer.json")
    assert f"--tokenizer-type hf --tokenizer-model {path}" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["tokenizer.json"]
    tok = build_tokenizer(DataConfig(tokenizer_type="hf", tokenizer_model=path))
    assert tok.vocab_size == 600
    assert tok.eod == tok._tokenizer.token_to_id("<|endoftext|>")
    ids = tok.encode(HELD_OUT)
    assert tok.decode(ids) == HELD_OUT
    assert len(ids) < len(HELD_OUT.encode())  # merges were learned
    assert len(tok.encode("the king")) <= 3


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_cli_writes_model_that_loads(inputs, tmp_path, capsys, model_type):
    prefix = str(tmp_path / "sp" / "m")
    argv = ["--type", "sentencepiece", "--vocab-size", "500", "--output", prefix]
    argv += ["--sentencepiece-model-type", model_type, "--input", *inputs, "--json-keys", "content"]
    assert cli.main(argv) == 0
    assert "--tokenizer-type sentencepiece" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "sp")) == ["m.model", "m.vocab"]
    tok = build_tokenizer(
        DataConfig(tokenizer_type="sentencepiece", tokenizer_model=prefix + ".model")
    )
    assert (tok.vocab_size, tok.eod) == (500, 2)
    with open(prefix + ".vocab", encoding="utf-8") as f:
        assert len(f.readlines()) == 500
    # Byte fallback and identity normalization: unseen characters and whitespace survive.
    assert tok.decode(tok.encode(HELD_OUT)) == HELD_OUT
    assert tok.encode_batch([HELD_OUT, "the king"]) == [
        tok.encode(HELD_OUT),
        tok.encode("the king"),
    ]


def test_library_result_and_json_output_path(inputs, tmp_path):
    result = train_tokenizer(
        [inputs[0]], str(tmp_path / "named.json"), kind="bpe", options=TrainOptions(vocab_size=300)
    )
    assert (result.path, result.tokenizer_type) == (str(tmp_path / "named.json"), "hf")
    assert (result.vocab_size, result.documents) == (300, 1)
    assert os.listdir(tmp_path) == ["named.json"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--type", "bpe", "--vocab-size", "100"],
            "--vocab-size: a byte-level BPE needs at least 257",
        ),
        (
            ["--type", "sentencepiece", "--vocab-size", "40"],
            "--vocab-size: SentencePiece cannot train",
        ),
    ],
)
def test_too_small_vocab_names_the_flag(inputs, tmp_path, capsys, argv, message):
    assert cli.main([*argv, "--input", inputs[0], "--output", str(tmp_path / "m")]) == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_input_errors(inputs, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    out = str(tmp_path / "out" / "m")
    for path, message in [
        (str(bad), f"{bad}:2: bad record"),
        (str(empty), "--input: no documents"),
        (str(tmp_path / "missing.txt"), "--input: no such file"),
    ]:
        argv = ["--type", "sentencepiece", "--vocab-size", "300", "--input", path, "--output", out]
        assert cli.main(argv) == 2
        assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(ConfigError, match="^--type 'wordpiece': unknown tokenizer kind; known: bpe, sentencepiece$"):
        train_tokenizer([inputs[0]], out, kind="wordpiece", options=TrainOptions(vocab_size=300))
