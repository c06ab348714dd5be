"""Preprocessing: worker-count independence, gzip input, EOD placement, atomic outputs, CLI."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from megatron.config.data import DataConfig
from megatron.data.indexed import open_indexed
from megatron.data.preprocess import PreprocessProgress, tokenize_to_indexed
from megatron.data.tokenizers import build_tokenizer
from megatron.data.train_tokenizer import TrainOptions, train_tokenizer
from tools import preprocess_data
from tools.prepare_default_corpus import play_files


@pytest.fixture(scope="module")
def paragraphs() -> list[str]:
    """Real documents of varied length: the first ~150 paragraphs of a play."""
    with open(play_files()[2], encoding="utf-8") as f:
        text = f.read()[:60_000]
    return [p for p in text.split("\n\n") if p.strip()][:150]


@pytest.fixture(scope="module")
def hf_cfg(paragraphs, tmp_path_factory) -> DataConfig:
    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(paragraphs), encoding="utf-8")
    trained = train_tokenizer(
        [str(corpus)],
        str(root / "tokenizer.json"),
        kind="bpe",
        options=TrainOptions(vocab_size=400),
    )
    return DataConfig(tokenizer_type="hf", tokenizer_model=trained.path)


def write_jsonl(path, docs: list[str], *, key: str = "text") -> str:
    lines = "".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs))
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(lines)
    return str(path)


def read_bytes(prefix: str) -> tuple[bytes, bytes]:
    with open(prefix + ".bin", "rb") as b, open(prefix + ".idx", "rb") as i:
        return b.read(), i.read()


def test_output_independent_of_workers(paragraphs, hf_cfg, tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", paragraphs)
    outputs = []
    for workers in (1, 2):
        stats = tokenize_to_indexed(
            [path], str(tmp_path / f"w{workers}"), hf_cfg, workers=workers, chunk_size=8
        )
        assert stats.documents == len(paragraphs)
        outputs.append(read_bytes(stats.prefixes["text"]))
    assert outputs[0] == outputs[1]
    assert len(outputs[0][0]) > 0


def test_gzip_input_and_eod_at_each_document_end(paragraphs, hf_cfg, tmp_path):
    docs = paragraphs[:40]
    gz = write_jsonl(tmp_path / "docs.jsonl.gz", docs)
    stats = tokenize_to_indexed([gz], str(tmp_path / "gz"), hf_cfg, append_eod=True, chunk_size=7)
    tok = build_tokenizer(hf_cfg)
    ds = open_indexed(stats.prefixes["text"])
    assert len(ds) == len(docs) == stats.documents
    assert stats.tokens == sum(len(ds[i]) for i in range(len(ds)))
    for i, doc in enumerate(docs):
        ids = ds[i].tolist()
        assert ids[-1] == tok.eod
        assert tok.eod not in ids[:-1]
        assert ids[:-1] == tok.encode(doc)
        assert tok.decode(ids) == doc
    plain = tokenize_to_indexed(
        [write_jsonl(tmp_path / "docs.jsonl", docs)], str(tmp_path / "plain"), hf_cfg
    )
    assert read_bytes(plain.prefixes["text"]) == read_bytes(stats.prefixes["text"])


def test_without_append_eod_no_eod(paragraphs, hf_cfg, tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", paragraphs[:10])
    stats = tokenize_to_indexed([path], str(tmp_path / "noeod"), hf_cfg, append_eod=False)
    tok = build_tokenizer(hf_cfg)
    ds = open_indexed(stats.prefixes["text"])
    assert [ds[i].tolist() for i in range(10)] == tok.encode_batch(paragraphs[:10])


def test_one_dataset_per_json_key(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"title": "ab", "body": "cde"}\n{"title": "f", "body": "gh"}\n')
    stats = tokenize_to_indexed(
        [str(path)],
        str(tmp_path / "k"),
        DataConfig(),
        json_keys=("title", "body"),
        append_eod=False,
    )
    assert stats.prefixes == {
        "title": str(tmp_path / "k_title_document"),
        "body": str(tmp_path / "k_body_document"),
    }
    body = open_indexed(stats.prefixes["body"])
    assert [bytes(body[i].tolist()) for i in range(2)] == [b"cde", b"gh"]


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_line_leaves_no_output_and_names_file_line(paragraphs, hf_cfg, tmp_path, workers):
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, paragraphs[:30])
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"text": "truncated\n')
    out = tmp_path / "out" / "bad"
    with pytest.raises(ValueError, match=rf"{path}:31: bad record"):
        tokenize_to_indexed([str(path)], str(out), hf_cfg, workers=workers, chunk_size=4)
    assert os.listdir(out.parent) == []


def test_progress_reports_and_final_summary(paragraphs, hf_cfg, tmp_path):
    reports: list[PreprocessProgress] = []
    path = write_jsonl(tmp_path / "docs.jsonl", paragraphs[:20])
    stats = tokenize_to_indexed(
        [path],
        str(tmp_path / "p"),
        hf_cfg,
        chunk_size=5,
        progress_every=0.0,
        on_progress=reports.append,
    )
    assert [r.documents for r in reports] == [5, 10, 15, 20, 20]
    assert [r.done for r in reports] == [False] * 4 + [True]
    final = reports[-1]
    assert (final.documents, final.tokens) == (stats.documents, stats.tokens)
    assert "20 docs" in final.describe() and "tokens/s" in final.describe()


def test_cli_gpt2bpe_flags_and_summary(paragraphs, hf_cfg, tmp_path, capsys):
    from tokenizers import Tokenizer

    vocab, merges = Tokenizer.from_file(hf_cfg.tokenizer_model).model.save(str(tmp_path))
    path = write_jsonl(tmp_path / "docs.jsonl", paragraphs[:12])
    prefix = str(tmp_path / "cli")
    argv = ["--input", path, "--output-prefix", prefix, "--tokenizer-type", "gpt2bpe"]
    argv += ["--vocab-file", vocab, "--merge-file", merges, "--append-eod", "--workers", "2"]
    assert preprocess_data.main(argv) == 0
    out, err = capsys.readouterr()
    assert f"text: {prefix}_text_document.bin / .idx" in out
    assert "12 docs" in out and "tokens/s" in out
    assert "done: 12 docs" in err
    # Same ids as the hf tokenizer the vocab and merges came from.
    reference = tokenize_to_indexed([path], str(tmp_path / "ref"), hf_cfg, append_eod=True)
    assert read_bytes(prefix + "_text_document") == read_bytes(reference.prefixes["text"])


def test_cli_errors_name_the_flag(tmp_path, capsys):
    path = write_jsonl(tmp_path / "docs.jsonl", ["a"])
    argv = ["--input", path, "--output-prefix", str(tmp_path / "x"), "--tokenizer-type", "gpt2bpe"]
    assert preprocess_data.main([*argv, "--vocab-file", path]) == 2
    assert "--merge-file: required with --tokenizer-type gpt2bpe" in capsys.readouterr().err
    assert preprocess_data.main([*argv[:4], "--workers", "0"]) == 2
    assert "--workers: must be at least 1" in capsys.readouterr().err
    assert not any(name.startswith("x") for name in os.listdir(tmp_path))
