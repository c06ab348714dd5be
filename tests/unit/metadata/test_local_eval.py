"""Per-type paired evaluation of records documents (the BigScience evaluation's targets)."""

from __future__ import annotations

import numpy as np
import torch

from megatron.data.tokenizers import ByteTokenizer
from megatron.metadata.local import LocalFormat
from megatron.metadata.local_eval import evaluate_types, meta_targets, metadata_row
from megatron.metadata.records import parse_document
from megatron.metadata.render import PrefixFormat
from tests.unit.metadata.test_evaluate import trained  # noqa: F401 (fixture)
from tests.unit.metadata.test_local import DOC1

ORDER = ("html", "entity", "timestamp", "url")
TOK = ByteTokenizer()


def _unigram(tokens: torch.Tensor) -> torch.Tensor:
    """Context-free: the same distribution at every position."""
    torch.manual_seed(0)
    row = torch.randn(TOK.vocab_size)
    return row.expand(tokens.shape[0], tokens.shape[1], -1).clone()


def test_local_only_row_scores_the_text_tokens_after_the_first():
    doc = parse_document({"text": "ab", "metadata": [
        {"key": "html", "type": "local", "value": "b", "char_start_idx": 1, "char_end_idx": 2}]})
    row, mask = metadata_row(TOK, doc, "html", ORDER, PrefixFormat(), LocalFormat())
    assert bytes(row[:-1]) == b"a<b>b</b>"
    assert "".join(str(int(m)) for m in mask) == "0111011110"
    assert np.flatnonzero(meta_targets(mask)).tolist() == [4, 9]  # "b" and EOD, as plain "ab"+EOD


def test_context_free_model_gives_equal_perplexities_without_prefix():
    doc = parse_document(DOC1)
    scores = evaluate_types(_unigram, TOK, [doc], ORDER, 512)
    by = {s.name: s for s in scores}
    for key in ("html", "entity"):  # local only: the same text bytes are scored in both rows
        s = by[key]
        assert s.tokens_meta == s.tokens_plain == len(DOC1["text"].encode())
        assert s.ppl_meta == s.ppl_plain
    # a prefix: the first non-metadata token is the " " after " |||", so the first text byte is
    # scored too (as the reference does)
    assert by["url"].tokens_meta == by["url"].tokens_plain + 1
    assert by["url"].documents == 1 and by["timestamp"].documents == 1


def test_too_long_documents_are_left_out():
    scores = evaluate_types(_unigram, TOK, [parse_document(DOC1)], ORDER, 40)
    assert all(s.documents == 0 and s.too_long == 1 for s in scores)


def test_tool_scores_a_records_file_per_type(trained, capsys, tmp_path):
    import json

    from tools.eval_metadata_ppl import main as eval_main

    save = trained[0]
    docs = tmp_path / "records.jsonl"
    text = "Kew is a garden in London."
    doc = {"text": text, "metadata": [
        {"key": "url", "type": "global", "value": "https://www.kew.org"},
        {"key": "html", "type": "local", "value": "b", "char_start_idx": 0, "char_end_idx": 3,
         "relative_start_pos": 0, "relative_end_pos": 0, "html_attrs": {"attrs": [], "values": []}},
    ]}  # fmt: skip
    docs.write_text(json.dumps(doc) + "\n")
    out = tmp_path / "scores.json"
    rc = eval_main(["--load", save, "--data", str(docs), "--metadata-list", "html,url",
                    "--output", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert "| html | 1 | 26 / 26 |" in capsys.readouterr().out
    rows = {r["type"]: r for r in json.loads(out.read_text())}
    assert rows["url"]["tokens_meta"] == rows["url"]["tokens_plain"] + 1 == 27
