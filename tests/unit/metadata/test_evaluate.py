"""Paired metadata evaluation (spec oracle 4) and the trained-on refusal."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from megatron.config import DistEnv
from megatron.config.data import DataConfig
from megatron.data.tokenizers import build_tokenizer
from megatron.metadata.evaluate import (
    Condition,
    build_pair,
    condition_prefix,
    default_conditions,
    evaluate_pairs,
)
from megatron.metadata.preprocess import MetadataOptions, tokenize_with_metadata
from megatron.metadata.render import PrefixFormat
from megatron.trainer.loop import train
from tests.helpers import tiny_plan
from tools.eval_metadata_ppl import main as eval_main

TOK = build_tokenizer(DataConfig(tokenizer_type="byte"))
KEYS = ("url", "title", "website_description")


def _records(path, n=12):
    with open(path) as f:
        rows = [json.loads(line) for line in f][:n]
    return [(r["text"][:400], {k: r.get(k) for k in KEYS}) for r in rows]


def test_pairs_score_the_same_tokens(package_jsonl):
    pairs = 0
    for cond in default_conditions(KEYS, "URL: github.com\n\n"):
        for text, meta in _records(package_jsonl):
            found = condition_prefix(cond, text, meta, "bigscience", PrefixFormat())
            pair = None if found is None else build_pair(TOK, text, *found, max_len=128)
            if pair is None:
                continue
            pairs += 1
            assert pair.plain[1:] == pair.meta[pair.context + 1 :]  # identical targets
            assert len(pair.meta) - 1 <= 128  # fits the context
            assert pair.targets == len(pair.plain) - 1 > 0
    assert pairs > 30


class Unigram(torch.nn.Module):
    """Ignores the context: the same logits at every position."""

    def __init__(self, vocab):
        super().__init__()
        self.bias = torch.randn(vocab, generator=torch.Generator().manual_seed(0))

    def forward(self, tokens):
        return self.bias.expand(*tokens.shape, -1)


class TwoTokens(torch.nn.Module):
    """Logits from the current and the previous token (0 before the first): context matters."""

    def __init__(self, vocab):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.table = torch.randn(vocab, vocab, generator=g)
        self.before = torch.randn(vocab, vocab, generator=g)

    def forward(self, tokens):
        previous = torch.nn.functional.pad(tokens, (1, 0))[:, :-1]
        return self.table[tokens] + self.before[previous]


def test_context_free_model_gives_equal_ppl_exactly(package_jsonl):
    scores = evaluate_pairs(
        Unigram(384), TOK, _records(package_jsonl), default_conditions(KEYS, "URL: x.org\n\n"), 128
    )
    assert [s.name for s in scores] == [*KEYS, "all", "fixed prefix"]
    for s in scores:
        assert s.documents > 0 and s.tokens > 0
        assert s.ppl_meta == s.ppl_plain and s.ratio == 1.0


def _nll_by_hand(model, row, first):
    total = 0.0
    for j in range(first, len(row) - 1):
        logits = model.table[row[j]] + model.before[row[j - 1] if j > 0 else 0]
        total -= float(torch.log_softmax(logits, dim=-1)[row[j + 1]])
    return total


def test_context_dependent_model_matches_a_hand_computation_and_differs():
    model = TwoTokens(384)
    text, meta = "abcdefgh", {"url": "https://a.org/x"}
    (score,) = evaluate_pairs(model, TOK, [(text, meta)], [Condition("url", ("url",))], 64)
    ids = [*TOK.encode(text), TOK.eod]
    meta_row = [*TOK.encode("url: https://a.org/x |||"), *TOK.encode(" "), *ids]
    context = len(meta_row) - len(ids)
    assert score.tokens == len(ids) - 1  # T[1:], the first text token is never scored
    assert score.nll_plain == pytest.approx(_nll_by_hand(model, ids, 0), rel=1e-5)
    assert score.nll_meta == pytest.approx(_nll_by_hand(model, meta_row, context), rel=1e-5)
    assert score.nll_meta != score.nll_plain


@pytest.fixture(scope="module")
def trained(package_jsonl, tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    train_jsonl, eval_jsonl = root / "train.jsonl", root / "eval.jsonl"
    lines = open(package_jsonl).readlines()
    train_jsonl.write_text("".join(lines[:30]))
    eval_jsonl.write_text("".join(lines[30:]))
    stats = tokenize_with_metadata(
        [str(train_jsonl)],
        str(root / "pk"),
        DataConfig(tokenizer_type="byte"),
        MetadataOptions(keys=KEYS, probability=0.5),
    )
    data_list = root / "list.txt"
    data_list.write_text(f"1 {stats.text_prefix} packages\n")
    save = str(root / "ckpt")
    train(
        tiny_plan(
            "--train-iters",
            "3",
            "--seq-length",
            "64",
            "--data-file-list",
            str(data_list),
            "--split",
            "100,0,0",
            "--save",
            save,
            mock=False,
        ),
        DistEnv(),
    )
    return save, str(train_jsonl), str(eval_jsonl), root


def test_tool_scores_held_out_documents(trained, capsys, tmp_path):
    save, _, eval_jsonl, _ = trained
    out = tmp_path / "scores.json"
    rc = eval_main(
        [
            "--load",
            save,
            "--data",
            eval_jsonl,
            "--metadata-keys",
            "url,title",
            "--prefix",
            "URL: github.com\\n\\n",
            "--output",
            str(out),
            "--max-documents",
            "4",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert (
        "| metadata | documents | tokens | ppl plain | ppl with prefix | ratio |"
        in capsys.readouterr().out
    )
    rows = json.loads(out.read_text())
    assert [r["type"] for r in rows] == ["url", "title", "all", "fixed prefix"]
    assert all(r["documents"] + r["prefix_too_long"] == 4 for r in rows[1:])  # all have a title
    assert rows[-1]["documents"] == 4 and all(r["tokens"] > 0 for r in rows)


def test_tool_refuses_a_training_file_by_path_or_content(trained, capsys, tmp_path):
    save, train_jsonl, _, _ = trained
    assert eval_main(["--load", save, "--data", train_jsonl, "--metadata-keys", "url"]) == 2
    err = capsys.readouterr().err
    assert "is a training file" in err and "pk_metadata.json" in err
    copy = tmp_path / "renamed.jsonl"
    shutil.copy(train_jsonl, copy)
    assert eval_main(["--load", save, "--data", str(copy), "--metadata-keys", "url"]) == 2
    assert "is a training file" in capsys.readouterr().err
