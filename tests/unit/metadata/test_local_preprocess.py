"""Records preprocessing: p = 0 identity, token masks from character masks, per-example draws."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError
from megatron.data.indexed import open_indexed
from megatron.data.preprocess import tokenize_to_indexed
from megatron.metadata.local import render_with_local
from megatron.metadata.local_preprocess import LocalOptions, tokenize_records
from megatron.metadata.records import RecordError, keep_keys, parse_document
from megatron.metadata.sampling import SamplingOptions, draw_keys
from tests.unit.metadata.test_local import DOC1
from tests.unit.data.test_tokenizers import corpus, hf_json  # noqa: F401 (fixtures)
from tools.preprocess_data import main as preprocess_main

BYTE = DataConfig(tokenizer_type="byte")
ORDER = ("html", "entity", "timestamp", "url")


def _records_jsonl(package_jsonl: str, path) -> str:
    """Real package descriptions with a url (global) and html/entity spans (local) on words."""
    with open(package_jsonl) as f, open(path, "w") as out:
        for i, line in enumerate(f):
            r = json.loads(line)
            text = r["text"]
            cut = [j for j, c in enumerate(text) if c == " "][:6]
            meta = [{"key": "url", "type": "global", "value": r.get("url") or "https://pypi.org"}]
            for a, b in zip(cut[0::2], cut[1::2], strict=False):
                meta.append({"key": "html", "type": "local", "value": "b", "char_start_idx": a,
                             "char_end_idx": b, "relative_start_pos": 0, "relative_end_pos": 0,
                             "html_attrs": {"attrs": ["class"], "values": [f"c{i}"]}})  # fmt: skip
            if cut:
                meta.append({"key": "entity", "type": "local", "value": "Python",
                             "char_start_idx": 0, "char_end_idx": cut[0]})  # fmt: skip
            out.write(json.dumps({"text": text, "metadata": meta}) + "\n")
    return str(path)


def _bytes(prefix):
    return [open(prefix + ext, "rb").read() for ext in (".bin", ".idx")]


def test_p0_is_byte_identical_to_plain(package_jsonl, tmp_path):
    records = _records_jsonl(package_jsonl, tmp_path / "r.jsonl")
    plain = tokenize_to_indexed([package_jsonl], str(tmp_path / "plain"), BYTE)
    opts = LocalOptions(ORDER, SamplingOptions(probability=0.0), variants=2)
    stats = tokenize_records([records], str(tmp_path / "loc"), BYTE, opts)
    for k in range(2):
        assert _bytes(stats.text_prefixes[k]) == _bytes(plain.prefixes["text"])
        assert open_indexed(stats.lossmask_prefixes[k]).index.dtype == np.uint8
    assert stats.counts[0].metadata_tokens == 0


@pytest.mark.parametrize("local_as_text", [False, True])
def test_token_mask_marks_every_token_with_an_inserted_character(package_jsonl, tmp_path, local_as_text):
    records = _records_jsonl(package_jsonl, tmp_path / "r.jsonl")
    opts = LocalOptions(ORDER, SamplingOptions(probability=1.0), local_as_text=local_as_text)
    stats = tokenize_records([records], str(tmp_path / "loc"), BYTE, opts)
    tokens, mask = open_indexed(stats.text_prefixes[0]), open_indexed(stats.lossmask_prefixes[0])
    with open(records) as f:
        docs = [parse_document(json.loads(line)) for line in f]
    for i, doc in enumerate(docs):
        r = render_with_local(doc, ORDER)
        prefix, text = r.prefix.encode(), r.text.encode()
        assert bytes(tokens.get(i)[:-1].astype(np.uint8)) == prefix + text
        # byte tokens: a token is metadata iff the character it belongs to is
        char_of_byte = [m for ch, m in zip(r.text, r.mask, strict=True) for _ in ch.encode()]
        want = np.array([0] * len(prefix) + [int(local_as_text or not m) for m in char_of_byte] + [1])
        assert (mask.get(i) == want).all()


def test_bad_offsets_refused_by_the_tool_naming_file_line_record(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    good = {"text": "fine", "metadata": [{"key": "url", "type": "global", "value": "u"}]}
    bad = {"text": "four", "metadata": [
        {"key": "entity", "type": "local", "value": "X", "char_start_idx": 2, "char_end_idx": 9}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    rc = preprocess_main(["--input", str(path), "--output-prefix", str(tmp_path / "o"),
                          "--metadata-list", "entity,url", "--append-eod"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and f"{path}:2: metadata record 0 (key 'entity')" in err and "outside" in err
    assert not list(tmp_path.glob("o_*"))  # nothing half-written


def test_sampled_type_frequencies_match_the_weights_within_3_sigma():
    weights = {"html": 1.0, "timestamp": 11.0, "title": 2.0, "entity_paragraph": 4.0}
    opts = SamplingOptions(random_sample=True, weights=weights, seed=7)
    keys = list(weights)
    n, singles, counts = 10_000, [], np.zeros(len(keys) + 1)
    for index in range(n):
        kept = draw_keys(keys, opts, epoch=0, index=index)
        counts[len(kept)] += 1
        if len(kept) == 1:
            singles.append(kept[0])
    # k ~ U{1..4}
    for k in range(1, len(keys) + 1):
        assert abs(counts[k] - n / 4) <= 3 * math.sqrt(n * 0.25 * 0.75)
    # with k = 1 the kept type is drawn with probability proportional to its weight
    m, total = len(singles), sum(weights.values())
    for key, w in weights.items():
        p = w / total
        assert abs(singles.count(key) - m * p) <= 3 * math.sqrt(m * p * (1 - p)), key


def test_html_rate_and_probability_and_epochs():
    opts = SamplingOptions(probability=0.5, random_sample=True, weights={"html": 1.0, "title": 1.0},
                           html_rate=0.25, seed=3)  # fmt: skip
    n = 4000
    draws = [draw_keys(["html", "title"], opts, 0, i) for i in range(n)]
    got = [d for d in draws if d is not None]
    assert abs(len(got) - n / 2) <= 3 * math.sqrt(n * 0.25)
    # html kept: rate 0.25, then in 1/2 (k = 2) + 1/4 (k = 1, picked) of the draws
    p = 0.25 * 0.75
    assert abs(sum("html" in d for d in got) - len(got) * p) <= 3 * math.sqrt(len(got) * p * (1 - p))
    again = [draw_keys(["html", "title"], opts, 0, i) for i in range(1000)]
    assert again == draws[:1000]  # a re-run draws the same
    epoch1 = [draw_keys(["html", "title"], opts, 1, i) for i in range(1000)]
    assert sum(a != b for a, b in zip(draws, epoch1, strict=False)) > 300


def test_variants_hold_the_draws_of_their_epoch(package_jsonl, tmp_path):
    records = _records_jsonl(package_jsonl, tmp_path / "r.jsonl")
    sampling = SamplingOptions(probability=0.5, random_sample=True,
                               weights={"html": 1, "entity": 1, "url": 1}, seed=11)  # fmt: skip
    stats = tokenize_records([records], str(tmp_path / "v"), BYTE,
                             LocalOptions(ORDER, sampling, variants=3), workers=2, chunk_size=7)
    one = tokenize_records([records], str(tmp_path / "w"), BYTE, LocalOptions(ORDER, sampling))
    assert _bytes(one.text_prefixes[0]) == _bytes(stats.text_prefixes[0])  # workers change nothing
    with open(records) as f:
        docs = [parse_document(json.loads(line)) for line in f]
    for k in range(3):
        tokens = open_indexed(stats.text_prefixes[k])
        for i, doc in enumerate(docs):
            kept = draw_keys([key for key in ORDER if key in doc.keys()], sampling, k, i)
            r = render_with_local(keep_keys(doc, kept or ()), ORDER)
            want = r.prefix + r.text if kept else doc.text
            assert bytes(tokens.get(i)[:-1].astype(np.uint8)) == want.encode()
    assert _bytes(stats.text_prefixes[0]) != _bytes(stats.text_prefixes[1])


def test_bad_sampling_flags():
    with pytest.raises(ConfigError, match="--random-sample-metadata-weights"):
        SamplingOptions(random_sample=True)
    with pytest.raises(ConfigError, match="only used with"):
        SamplingOptions(html_rate=0.5)
    with pytest.raises(RecordError):
        parse_document({"text": "ab", "metadata": [{"key": "x", "type": "weird", "value": 1}]})
    assert parse_document(DOC1).keys() == ["url", "timestamp", "html", "entity"]


def test_hf_token_mask_uses_character_offsets(hf_json):
    from megatron.data.tokenizers import build_tokenizer
    from megatron.metadata.sampling import encode_with_mask

    tok = build_tokenizer(DataConfig(tokenizer_type="hf", tokenizer_model=hf_json))
    text = "Café 日本 and the king's daughter."
    doc = parse_document({"text": text, "metadata": [
        {"key": "html", "type": "local", "value": "b", "char_start_idx": 5, "char_end_idx": 7},
        {"key": "entity", "type": "local", "value": "Japan", "char_start_idx": 5, "char_end_idx": 7},
    ]})  # fmt: skip
    r = render_with_local(doc, ORDER)
    assert r.text == "Café <b>日本</b> [[Japan]] and the king's daughter."  # list order: html first
    ids, mask = encode_with_mask(tok, r.text, r.mask)
    assert ids == tok.encode(r.text)
    spans = tok._tokenizer.encode(r.text, add_special_tokens=False).offsets  # noqa: SLF001
    for (s, e), m in zip(spans, mask, strict=True):
        assert m == any(r.mask[s:e]), (r.text[s:e], m)
    # every inserted character sits in a masked token; "Café" and "daughter" are text
    covered = {c for (s, e), m in zip(spans, mask, strict=True) if m for c in range(s, e)}
    assert {i for i, m in enumerate(r.mask) if m} <= covered
    assert not mask[0] and not mask[-1]
