"""Preprocessing with metadata: outputs, loss-mask positions, p = 0 identity, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError
from megatron.data.indexed import open_indexed
from megatron.data.preprocess import tokenize_to_indexed
from megatron.metadata.preprocess import MetadataOptions, tokenize_with_metadata
from megatron.metadata.render import gets_prefix, render_document
from tools.preprocess_data import main as preprocess_main

BYTE = DataConfig(tokenizer_type="byte")
KEYS = ("url", "title", "website_description")
EOD = 256  # the byte tokenizer's end of document


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _bytes(prefix):
    return [open(prefix + ext, "rb").read() for ext in (".bin", ".idx")]


def test_p0_is_byte_identical_to_plain_and_mask_is_all_ones(package_jsonl, tmp_path):
    plain = tokenize_to_indexed([package_jsonl], str(tmp_path / "plain"), BYTE)
    meta = tokenize_with_metadata(
        [package_jsonl], str(tmp_path / "meta"), BYTE, MetadataOptions(keys=KEYS, probability=0.0)
    )
    assert _bytes(meta.text_prefix) == _bytes(plain.prefixes["text"])
    mask = open_indexed(meta.lossmask_prefix)
    assert np.concatenate([mask.get(i) for i in range(len(mask))]).min() == 1
    assert meta.report.prefixed == 0 and meta.prefix_tokens == 0


def test_p1_tokens_are_prefix_then_text_and_mask_zero_exactly_on_prefix(package_jsonl, tmp_path):
    stats = tokenize_with_metadata(
        [package_jsonl], str(tmp_path / "m"), BYTE, MetadataOptions(keys=KEYS, probability=1.0)
    )
    tokens, mask = open_indexed(stats.text_prefix), open_indexed(stats.lossmask_prefix)
    for i, record in enumerate(_records(package_jsonl)):
        r = render_document(record["text"], record, KEYS)
        want_prefix, want_text = r.prefix.encode(), r.text.encode()
        assert bytes(tokens.get(i)[:-1].astype(np.uint8)) == want_prefix + want_text
        assert tokens.get(i)[-1] == EOD
        m = mask.get(i)
        assert m.dtype == np.uint8 and m.size == tokens.get(i).size
        assert (m[: len(want_prefix)] == 0).all() and (m[len(want_prefix) :] == 1).all()
    assert stats.report.prefixed == stats.report.documents == len(tokens)


def test_p_half_fraction_and_rerun_and_workers_identical(tmp_path):
    path = tmp_path / "many.jsonl"
    with open(path, "w") as f:
        for i in range(10_000):
            f.write(json.dumps({"text": f"d{i}", "url": f"https://site{i % 7}.org/p/{i}"}) + "\n")
    options = MetadataOptions(keys=("url",), probability=0.5, seed=5)
    a = tokenize_with_metadata([str(path)], str(tmp_path / "a"), BYTE, options)
    b = tokenize_with_metadata(
        [str(path)], str(tmp_path / "b"), BYTE, options, workers=2, chunk_size=333
    )
    assert abs(a.report.fraction_prefixed - 0.5) <= 0.015
    assert _bytes(a.text_prefix) == _bytes(b.text_prefix)
    assert _bytes(a.lossmask_prefix) == _bytes(b.lossmask_prefix)
    mask = open_indexed(a.lossmask_prefix)
    prefixed = {i for i in range(10_000) if mask.get(i)[0] == 0}
    assert prefixed == {i for i in range(10_000) if gets_prefix(5, i, 0.5)}
    summary = json.load(open(a.json_path))
    assert summary["fraction_prefixed"] == a.report.fraction_prefixed
    assert (
        summary["keys"] == ["url"] and summary["template"] == "bigscience" and summary["seed"] == 5
    )
    assert summary["inputs"][0]["path"] == os.path.abspath(path)


def test_missing_key_is_counted_and_a_key_nobody_has_is_an_error(package_jsonl, tmp_path):
    path = tmp_path / "some.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps({"text": "alpha beta", "url": "https://a.org/x"}) + "\n")
        f.write(json.dumps({"text": "gamma delta"}) + "\n")
    stats = tokenize_with_metadata(
        [str(path)], str(tmp_path / "s"), BYTE, MetadataOptions(keys=("url",), probability=1.0)
    )
    assert stats.report.missing["url"] == 1 and stats.report.prefixed == 1
    with pytest.raises(
        ConfigError,
        match=r"--metadata-keys: no document .* has \['date'\]; the first record's fields are \['text', 'url'\]",
    ):
        tokenize_with_metadata(
            [str(path)],
            str(tmp_path / "e"),
            BYTE,
            MetadataOptions(keys=("url", "date"), probability=1.0),
        )
    assert not any(p.name.startswith("e_") for p in tmp_path.iterdir())  # nothing half-written


def test_bad_options():
    with pytest.raises(ConfigError, match="--metadata-probability"):
        MetadataOptions(keys=("url",), probability=1.5)
    with pytest.raises(ConfigError, match="--metadata-keys: the meco template renders only"):
        MetadataOptions(keys=("url", "title"), template="meco")
    with pytest.raises(ConfigError, match="--metadata-template"):
        MetadataOptions(keys=("url",), template="nope")
    with pytest.raises(ConfigError, match="repeated"):
        MetadataOptions(keys=("url", "url"))


def test_cli_writes_three_outputs_and_reports(package_jsonl, tmp_path, capsys):
    out = str(tmp_path / "cli")
    rc = preprocess_main(
        [
            "--input",
            package_jsonl,
            "--output-prefix",
            out,
            "--append-eod",
            "--metadata-keys",
            "url,title",
            "--metadata-template",
            "bigscience",
            "--metadata-probability",
            "0.5",
            "--metadata-seed",
            "3",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "documents prefixed" in printed
    for suffix in ("_text_document.bin", "_lossmask_document.idx", "_metadata.json"):
        assert os.path.isfile(out + suffix)
    txt = tmp_path / "plain.txt"
    txt.write_text("no metadata here")
    rc = preprocess_main(
        ["--input", str(txt), "--output-prefix", out + "2", "--metadata-keys", "url"]
    )
    assert rc == 2
    assert "needs jsonl records" in capsys.readouterr().err


def test_meco_template_prefix_tokens(package_jsonl, tmp_path):
    from megatron.metadata.render import url_domain

    stats = tokenize_with_metadata(
        [package_jsonl],
        str(tmp_path / "meco"),
        BYTE,
        MetadataOptions(keys=("url",), template="meco", probability=1.0),
    )
    tokens, mask = open_indexed(stats.text_prefix), open_indexed(stats.lossmask_prefix)
    for i, record in enumerate(_records(package_jsonl)):
        if not record.get("url"):
            assert mask.get(i).min() == 1  # no URL: no prefix
            continue
        prefix = f"URL: {url_domain(record['url'])}\n\n".encode()
        row = bytes(tokens.get(i)[:-1].astype(np.uint8))
        assert row == prefix + record["text"].encode()  # MeCo: no space before the text
        assert int((mask.get(i) == 0).sum()) == len(prefix)
