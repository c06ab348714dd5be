"""Indexed datasets, GPT samples and splits on real tokens."""

from __future__ import annotations

import numpy as np
import pytest

from megatron.config.data import DataConfig
from megatron.data.indexed import IndexedWriter, open_indexed
from megatron.data.preprocess import tokenize_to_indexed
from megatron.data.sequences import SequenceDataset, split_documents


@pytest.fixture
def docs_prefix(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 250, size=rng.integers(5, 40)) for _ in range(30)]
    with IndexedWriter(str(tmp_path / "docs"), vocab_size=258) as writer:
        for d in docs:
            writer.add_document(d)
    return str(tmp_path / "docs"), docs


def test_writer_round_trip(docs_prefix):
    prefix, docs = docs_prefix
    ds = open_indexed(prefix)
    assert len(ds) == len(docs)
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ds[i], d)


def test_interrupted_write_leaves_no_prefix(tmp_path):
    with pytest.raises(RuntimeError), IndexedWriter(str(tmp_path / "x"), vocab_size=258) as writer:
        writer.add_document([1, 2, 3])
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_samples_are_windows_of_the_epoch_stream(docs_prefix):
    prefix, docs = docs_prefix
    ds = SequenceDataset(open_indexed(prefix), 0, len(docs), seq_length=16, seed=1, name="t")
    order, _, shuffle = ds._epoch(0)
    stream = np.concatenate([docs[i] for i in order])
    for j in range(ds.samples_per_epoch):
        k = int(shuffle[j])
        np.testing.assert_array_equal(ds[j], stream[k * 16 : k * 16 + 17])
    # Every epoch covers each window once, in a new order.
    assert sorted(shuffle) == list(range(ds.samples_per_epoch))
    assert not np.array_equal(ds._epoch(1)[2], shuffle)


def test_samples_are_deterministic_and_seeded(docs_prefix):
    prefix, docs = docs_prefix
    a = SequenceDataset(open_indexed(prefix), 0, len(docs), 16, seed=1, name="t")
    b = SequenceDataset(open_indexed(prefix), 0, len(docs), 16, seed=1, name="t")
    c = SequenceDataset(open_indexed(prefix), 0, len(docs), 16, seed=2, name="t")
    idx = [0, 5, a.samples_per_epoch + 3]
    assert all(np.array_equal(a[i], b[i]) for i in idx)
    assert not all(np.array_equal(a[i], c[i]) for i in idx)


def test_split_documents_is_contiguous_disjoint_and_complete():
    assert split_documents(100, (0.98, 0.01, 0.01)) == [(0, 98), (98, 99), (99, 100)]
    assert split_documents(42, (0.9, 0.05, 0.05)) == [(0, 38), (38, 40), (40, 42)]
    # A tiny dataset still gets one document in every requested split.
    assert split_documents(3, (0.98, 0.01, 0.01)) == [(0, 1), (1, 2), (2, 3)]
    assert split_documents(5, (1.0, 0.0, 0.0)) == [(0, 5), (5, 5), (5, 5)]
    with pytest.raises(ValueError, match="cannot fill 3 non-empty splits"):
        split_documents(2, (0.9, 0.05, 0.05))


def test_preprocess_text_round_trip(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.jsonl").write_text('{"text": "caf\\u00e9"}\n{"text": "second"}\n')
    cfg = DataConfig(tokenizer_type="byte")
    stats = tokenize_to_indexed([str(tmp_path / "a.txt")], str(tmp_path / "out_a"), cfg, append_eod=True)
    ds = open_indexed(stats.prefixes["text"])
    assert list(ds[0]) == list(b"hello world") + [256]
    stats = tokenize_to_indexed([str(tmp_path / "b.jsonl")], str(tmp_path / "out_b"), cfg, workers=2, append_eod=False)
    ds = open_indexed(stats.prefixes["text"])
    assert bytes(ds[0].tolist()).decode() == "café"
    assert stats.documents == 2
