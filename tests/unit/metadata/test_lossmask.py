"""The loss mask in training: found next to its dataset, read through the same indices, label
positions (spec oracle 2), exactly-zero gradient at metadata positions, mismatch refusal."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError
from megatron.data.builder import build_streams
from megatron.data.indexed import open_indexed
from megatron.data.loader import BatchReader
from megatron.data.sequences import SequenceDataset
from megatron.metadata.lossmask import find_lossmask, open_lossmask
from megatron.metadata.preprocess import MetadataOptions, tokenize_with_metadata
from megatron.model.gpt import masked_mean, token_losses
from tests.helpers import tiny_plan

BYTE = DataConfig(tokenizer_type="byte")
KEYS = ("url", "title", "website_description")


@pytest.fixture(scope="module")
def masked(package_jsonl, tmp_path_factory):
    out = tmp_path_factory.mktemp("masked") / "pk"
    return tokenize_with_metadata(
        [package_jsonl], str(out), BYTE, MetadataOptions(keys=KEYS, probability=0.5)
    )


def test_find_lossmask_next_to_its_dataset(masked, tmp_path):
    assert find_lossmask(masked.text_prefix) == masked.lossmask_prefix
    assert find_lossmask(masked.lossmask_prefix) is None
    assert find_lossmask(str(tmp_path / "other_text_document")) is None
    (tmp_path / "a_b_lossmask_document.idx").write_bytes(b"")
    (tmp_path / "a_b_metadata.json").write_text(
        '{"text_prefix": "elsewhere/a_b_long_text_document"}'
    )
    assert find_lossmask(str(tmp_path / "a_b_long_text_document")) == str(
        tmp_path / "a_b_lossmask_document"
    )
    # "a_b_c_text_document" (plain) must not take the mask of "a_b" (key "long_text")
    assert find_lossmask(str(tmp_path / "a_b_c_text_document")) is None


def test_samples_carry_the_mask_of_the_same_tokens(masked):
    indexed, mask = open_indexed(masked.text_prefix), open_indexed(masked.lossmask_prefix)
    seq = 64
    with_mask = SequenceDataset(indexed, 0, len(indexed), seq, seed=3, name="m", lossmask=mask)
    plain = SequenceDataset(indexed, 0, len(indexed), seq, seed=3, name="m")
    order, _, shuffle = with_mask._epoch(0)
    # Reference: the epoch's documents concatenated, then the shuffled window.
    flat_tokens = np.concatenate([indexed.get(int(d)) for d in order]).astype(np.int64)
    flat_mask = np.concatenate([mask.get(int(d)) for d in order]).astype(np.int64)
    for j in (0, 1, 7, with_mask.samples_per_epoch - 1):
        row = with_mask[j]
        start = int(shuffle[j]) * seq
        assert row.shape == (2, seq + 1)
        assert np.array_equal(row[0], plain[j])
        assert np.array_equal(row[0], flat_tokens[start : start + seq + 1])
        assert np.array_equal(row[1], flat_mask[start : start + seq + 1])


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def __getitem__(self, i):
        return 0, self.rows[i]


def _reader(rows, micro=1):
    return BatchReader(
        _Rows(rows),
        micro_batch_size=micro,
        dp_size=1,
        dp_rank=0,
        grad_accum_steps=1,
        device=torch.device("cpu"),
    )


def test_label_positions_predicting_prefix_tokens_are_masked(masked):
    indexed, mask = open_indexed(masked.text_prefix), open_indexed(masked.lossmask_prefix)
    doc = next(i for i in range(len(mask)) if mask.get(i)[0] == 0)
    k = int((mask.get(doc) == 0).sum())
    t = 5  # the document starts at position t of the sample, after the end of another one
    before = len(indexed.get(doc - 1 if doc else doc + 1))
    other = indexed.get(doc - 1 if doc else doc + 1)[before - t :]
    tokens = np.concatenate([other, indexed.get(doc)]).astype(np.int64)
    trainable = np.concatenate([np.ones(t, np.uint8), mask.get(doc)]).astype(np.int64)
    batch = _reader([np.stack([tokens, trainable])]).micro_batch(0, 0)
    loss_mask = batch.loss_mask[0]
    assert loss_mask.dtype == torch.bool
    masked_positions = torch.nonzero(~loss_mask).flatten().tolist()
    assert masked_positions == list(range(t - 1, t - 1 + k))  # exactly the k predicting the prefix
    assert bool(loss_mask[t + k - 1])  # predicts the first text token: a target
    assert int(batch.labels[0, t + k - 1]) == int(indexed.get(doc)[k])


def test_loss_is_text_only_and_gradient_at_metadata_is_exactly_zero(dist_world1, masked):
    mask = open_indexed(masked.lossmask_prefix)
    seq = 48
    doc = next(i for i in range(1, len(mask)) if mask.get(i)[0] == 0)
    flat = np.concatenate([mask.get(doc - 1), mask.get(doc)])
    start = len(mask.get(doc - 1)) - 10  # 10 text tokens, then a prefix, then text
    row = flat[start : start + seq + 1].astype(np.int64)
    tokens = np.arange(seq + 1) % 50
    batch = _reader([np.stack([tokens, row])]).micro_batch(0, 0)
    assert (~batch.loss_mask).any() and batch.loss_mask.any()
    torch.manual_seed(0)
    logits = torch.randn(1, seq, 64, requires_grad=True)
    loss = masked_mean(token_losses(logits, batch.labels), batch.loss_mask)
    keep = batch.loss_mask[0]
    reference = F.cross_entropy(logits[0, keep].detach(), batch.labels[0, keep])
    assert float(loss.detach()) == pytest.approx(float(reference), rel=1e-6)
    loss.backward()
    assert torch.equal(logits.grad[0, ~keep], torch.zeros_like(logits.grad[0, ~keep]))
    assert (logits.grad[0, keep].abs().sum(dim=-1) > 0).all()


def test_bool_mask_not_is_logical_unlike_the_integer_bug():
    as_int = torch.tensor([1, 0])
    assert (~as_int).tolist() == [-2, -1]  # bigscience's bug: both truthy
    batch = _reader([np.stack([np.arange(5), np.array([1, 0, 1, 1, 1])])]).micro_batch(0, 0)
    assert (~batch.loss_mask).tolist() == [[True, False, False, False]]


def test_plain_rows_and_masked_rows_share_a_micro_batch():
    rows = [np.arange(5), np.stack([np.arange(5), np.array([0, 0, 1, 1, 1])])]
    batch = _reader(rows, micro=2).micro_batch(0, 0)
    assert batch.loss_mask.tolist() == [[True] * 4, [False, True, True, True]]
    assert batch.tokens.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]


def _list(tmp_path, *lines):
    path = tmp_path / "list.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_mismatched_mask_is_refused_naming_both_files(package_jsonl, tmp_path):
    a = tokenize_with_metadata(
        [package_jsonl], str(tmp_path / "a"), BYTE, MetadataOptions(keys=KEYS, probability=1.0)
    )
    b = tokenize_with_metadata(
        [package_jsonl], str(tmp_path / "b"), BYTE, MetadataOptions(keys=("url",), probability=1.0)
    )
    for ext in (".bin", ".idx"):
        shutil.copy(b.lossmask_prefix + ext, a.lossmask_prefix + ext)  # b's prefixes are shorter
    plan = tiny_plan(
        "--data-file-list",
        _list(tmp_path, f"1 {a.text_prefix} pk"),
        "--train-iters",
        "2",
        mock=False,
    )
    with pytest.raises(ConfigError) as e:
        build_streams(plan)
    assert a.lossmask_prefix + ".idx" in str(e.value) and a.text_prefix + ".idx" in str(e.value)
    assert "does not belong to this text dataset" in str(e.value)
    # A different document count is named the same way.
    first = tmp_path / "first.jsonl"
    first.write_text(open(package_jsonl).readline())
    c = tokenize_with_metadata([str(first)], str(tmp_path / "c"), BYTE, MetadataOptions(keys=KEYS))
    for ext in (".bin", ".idx"):
        shutil.copy(c.lossmask_prefix + ext, a.lossmask_prefix + ext)
    with pytest.raises(ConfigError, match="holds 1 documents but .* holds 40"):
        open_lossmask(a.text_prefix, open_indexed(a.text_prefix))


def test_no_metadata_loss_mask_flag_reads_tokens_only(masked, tmp_path):
    data = _list(tmp_path, f"1 {masked.text_prefix} pk")
    on = build_streams(tiny_plan("--data-file-list", data, "--train-iters", "2", mock=False))
    off = build_streams(
        tiny_plan(
            "--data-file-list", data, "--train-iters", "2", "--no-metadata-loss-mask", mock=False
        )
    )
    _, row = on.train.stream[0]
    _, tokens = off.train.stream[0]
    assert row.shape == (2, 17) and np.array_equal(row[0], tokens)
