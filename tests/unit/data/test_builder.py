"""Streams of a run: splits are disjoint, separate eval lists, data-constrained subsets, DP ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron.config import ConfigError
from megatron.data.builder import RepeatedSubset, build_streams
from megatron.data.data_list import DataListError, check_data_inputs
from megatron.data.loader import BatchReader, MockStream
from tests.helpers import tiny_plan

SEQ = ["--seq-length", "32", "--tokenizer-type", "byte"]


def write_list(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_splits_take_disjoint_documents_of_every_dataset(tmp_path, three_corpora):
    data = write_list(tmp_path / "l.txt", [f"1 {p} {c}" for c, p in three_corpora.items()])
    streams = build_streams(tiny_plan(*SEQ, "--train-iters", "10", "--data-file-list", data, "--split", "50,25,25", mock=False))
    for k in range(3):
        docs = [set(s.stream.datasets[k].doc_ids.tolist()) for s in (streams.train, streams.valid, streams.test)]
        assert not (docs[0] & docs[1]) and not (docs[0] & docs[2]) and not (docs[1] & docs[2])
    assert streams.train.corpora == ("comedy", "history", "tragedy")


def test_separate_eval_lists_and_the_leak_check(tmp_path, three_corpora):
    train = write_list(tmp_path / "t.txt", [f"1 {three_corpora['comedy']} comedy", f"1 {three_corpora['history']} history"])
    valid = write_list(tmp_path / "v.txt", [f"1 {three_corpora['tragedy']} tragedy"])
    plan = tiny_plan(*SEQ, "--train-iters", "10", "--data-file-list", train, "--valid-data-file-list", valid, "--split", "90,10,0", mock=False)
    check_data_inputs(plan.config)
    streams = build_streams(plan)
    assert streams.valid.corpora == ("tragedy",)
    # The training list's valid share goes to training: all of its documents train.
    comedy = streams.train.stream.datasets[0]
    assert len(comedy.doc_ids) == len(comedy.indexed)
    leaky = write_list(tmp_path / "leak.txt", [f"1 {three_corpora['history']} history"])
    plan = tiny_plan(*SEQ, "--train-iters", "10", "--data-file-list", train, "--test-data-file-list", leaky, mock=False)
    with pytest.raises(DataListError, match=r"leak.txt:1: .*history.* is also in --data-file-list"):
        check_data_inputs(plan.config)


def test_unique_tokens_repeat_a_fixed_subset_each_epoch(tmp_path, three_corpora):
    data = write_list(tmp_path / "l.txt", [f"1 {p} {c}" for c, p in three_corpora.items()])
    flags = [*SEQ, "--data-file-list", data, "--split", "100,0,0", "--micro-batch-size", "4"]
    plan = tiny_plan(*flags, "--unique-tokens", str(32 * 100), "--epochs", "3", "--train-iters", "75", mock=False)
    assert plan.train_iters == 75  # ceil(3 * 100 samples / 4)
    stream = build_streams(plan).train.stream
    assert isinstance(stream, RepeatedSubset) and stream.size == 100
    epochs = [sorted(tuple(stream[e * 100 + i][1][:8].tolist()) for i in range(100)) for e in range(3)]
    assert epochs[0] == epochs[1] == epochs[2]  # the same samples ...
    assert [stream[i][1][0] for i in range(100)] != [stream[100 + i][1][0] for i in range(100)]  # ... reordered
    with pytest.raises(ConfigError, match="--unique-tokens: .* unique samples"):
        build_streams(tiny_plan(*flags, "--unique-tokens", str(32 * 10**6), "--epochs", "1", "--train-iters", "250000", mock=False))


def test_epochs_need_unique_tokens_and_agree_with_other_lengths():
    with pytest.raises(ConfigError, match="--epochs: needs --unique-tokens"):
        tiny_plan("--epochs", "2", "--train-iters", "5")
    with pytest.raises(ConfigError, match="run lengths disagree"):
        tiny_plan("--unique-tokens", "1600", "--epochs", "2", "--train-iters", "5")


def test_data_parallel_ranks_read_disjoint_samples_covering_the_step():
    stream = MockStream(64, 8, seed=0)
    readers = [
        BatchReader(stream, micro_batch_size=2, dp_size=2, dp_rank=r, grad_accum_steps=3, device=torch.device("cpu"))
        for r in range(2)
    ]
    for consumed in (0, 12, 24):
        seen = [i for r in readers for m in range(3) for i in r.sample_indices(consumed, m)]
        assert sorted(seen) == list(range(consumed, consumed + 12))
        tokens = [readers[r].micro_batch(consumed, m).tokens for r in range(2) for m in range(3)]
        assert len({tuple(t.flatten().tolist()) for t in tokens}) == 6
    assert np.array_equal(readers[0].micro_batch(12, 1).tokens.numpy()[:, :3], np.stack([stream[i][1][:3] for i in (16, 17)]))


def test_sample_order_does_not_depend_on_where_the_files_are(tmp_path, three_corpora, monkeypatch):
    """A moved checkout, or a list with relative paths (the continual runner makes them absolute),
    reads the same samples in the same order: the shuffle is salted by file name, not directory."""
    import os
    import shutil

    prefix = three_corpora["comedy"]
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for ext in (".bin", ".idx"):
        shutil.copy(prefix + ext, moved / (os.path.basename(prefix) + ext))
    monkeypatch.chdir(tmp_path)
    lists = [write_list(tmp_path / "abs.txt", [f"1 {prefix} comedy"]),
             write_list(tmp_path / "moved.txt", [f"1 elsewhere/{os.path.basename(prefix)} comedy"])]  # fmt: skip
    samples = []
    for data in lists:
        stream = build_streams(tiny_plan(*SEQ, "--train-iters", "10", "--data-file-list", data, mock=False)).train.stream
        samples.append(np.stack([stream[i][1] for i in range(20)]))
    np.testing.assert_array_equal(samples[0], samples[1])
