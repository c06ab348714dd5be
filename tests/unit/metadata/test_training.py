"""Training on metadata-prefixed data: trainable tokens counted apart from consumed tokens,
blends with plain corpora and per-corpus loss, resume bit-exact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron.config import DistEnv
from megatron.config.data import DataConfig
from megatron.data.builder import build_streams
from megatron.metadata.preprocess import MetadataOptions, tokenize_with_metadata
from megatron.trainer.loop import train
from tests.helpers import tiny_plan

BYTE = DataConfig(tokenizer_type="byte")


@pytest.fixture(scope="module")
def data_list(package_jsonl, tmp_path_factory):
    # Short texts (300 characters) make metadata ~25% of the tokens: every few windows hold some.
    root = tmp_path_factory.mktemp("train")
    short = root / "short.jsonl"
    with open(package_jsonl) as f, open(short, "w") as out:
        for line in f:
            record = json.loads(line)
            out.write(json.dumps({**record, "text": record["text"][:300]}) + "\n")
    stats = tokenize_with_metadata(
        [str(short)],
        str(root / "pk"),
        BYTE,
        MetadataOptions(keys=("url", "title", "website_description"), probability=1.0),
    )
    path = root / "list.txt"
    path.write_text(f"1 {stats.text_prefix} packages\n")
    return str(path)


FLAGS = [
    "--train-iters",
    "6",
    "--seq-length",
    "32",
    "--micro-batch-size",
    "4",
    "--split",
    "90,10,0",
]


def test_trainable_tokens_are_counted_apart_from_consumed(data_list):
    plan = tiny_plan(*FLAGS, "--data-file-list", data_list, mock=False)
    result = train(plan, DistEnv())
    stream = build_streams(plan).train.stream
    expected = sum(int(np.count_nonzero(stream[i][1][1][1:])) for i in range(6 * 4))
    assert result.tokens == (expected, 6 * 4 * 32)
    assert 0 < expected < 6 * 4 * 32  # the sampled windows hold metadata
    unmasked = train(
        tiny_plan(*FLAGS, "--data-file-list", data_list, "--no-metadata-loss-mask", mock=False),
        DistEnv(),
    )
    assert unmasked.tokens == (6 * 4 * 32, 6 * 4 * 32)
    assert unmasked.losses != result.losses  # metadata positions are averaged in too


def test_blend_with_a_plain_corpus_reports_per_corpus_loss(
    data_list, shakespeare_prefix, tmp_path, capsys
):
    prefix = open(data_list).read().split()[1]
    blend = tmp_path / "blend.txt"
    blend.write_text(f"1 {prefix} packages\n1 {shakespeare_prefix} plays\n")
    result = train(tiny_plan(*FLAGS, "--data-file-list", str(blend), mock=False), DistEnv())
    assert result.iteration == 6 and all(np.isfinite(result.losses))
    out = capsys.readouterr().out
    assert "train loss by corpus: packages" in out
    assert "trainable of 128 consumed" in out


def test_resume_with_masks_is_bit_exact(data_list, tmp_path):
    save = str(tmp_path / "ckpt")
    flags = [*FLAGS, "--data-file-list", data_list]
    full = train(tiny_plan(*flags, mock=False), DistEnv())
    first = train(tiny_plan(*flags, "--save", save, "--exit-interval", "3", mock=False), DistEnv())
    second = train(tiny_plan(*flags, "--save", save, "--load", save, mock=False), DistEnv())
    assert first.losses + second.losses == full.losses
