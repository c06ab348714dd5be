"""Pre-drawn metadata variants in training: epoch e reads variant e mod K, epochs differ, resume
is bit-exact across an epoch boundary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron.config import DistEnv
from megatron.config.data import DataConfig
from megatron.data.builder import build_streams
from megatron.metadata.local_preprocess import LocalOptions, tokenize_records
from megatron.metadata.sampling import SamplingOptions
from megatron.metadata.variants import VariantSequenceDataset
from megatron.trainer.loop import train
from tests.helpers import tiny_plan
from tests.unit.metadata.test_local_preprocess import ORDER, _records_jsonl

K = 3


@pytest.fixture(scope="module")
def variant_list(package_jsonl, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("variants")
    short = root / "short.jsonl"
    with open(package_jsonl) as f, open(short, "w") as out:
        for line in list(f)[:10]:
            record = json.loads(line)
            out.write(json.dumps({**record, "text": record["text"][:120]}) + "\n")
    records = _records_jsonl(str(short), root / "r.jsonl")
    sampling = SamplingOptions(probability=0.75, random_sample=True,
                               weights={"html": 1.0, "entity": 1.0, "url": 2.0}, seed=5)  # fmt: skip
    stats = tokenize_records(
        [records], str(root / "loc"), DataConfig(tokenizer_type="byte"),
        LocalOptions(ORDER, sampling, variants=K),
    )  # fmt: skip
    path = root / "list.txt"
    path.write_text(f"1 {stats.text_prefixes[0]} html\n")
    return str(path)


FLAGS = ["--seq-length", "32", "--micro-batch-size", "4", "--split", "90,10,0"]


def test_epoch_e_reads_variant_e_mod_k_and_epochs_differ(variant_list):
    plan = tiny_plan(*FLAGS, "--train-iters", "4", "--data-file-list", variant_list, mock=False)
    dataset = build_streams(plan).train.stream.datasets[0]
    assert isinstance(dataset, VariantSequenceDataset) and len(dataset.variants) == K
    epochs: dict[int, list[bytes]] = {}
    for i in range(2 * dataset.cycle):
        epoch, j = dataset.locate(i)
        sample = dataset[i]
        assert np.array_equal(sample, dataset.variants[epoch % K].sample(epoch, j))
        epochs.setdefault(epoch, []).append(sample[0].astype(np.uint16).tobytes())
    assert sorted(epochs) == list(range(2 * K))
    assert all(len(epochs[e]) == dataset.variants[e % K].samples_per_epoch for e in epochs)
    # different draws: epochs 0 and 1 hold different token streams
    assert b"".join(sorted(epochs[0])) != b"".join(sorted(epochs[1]))
    # epoch K re-reads variant 0 in a new order
    assert epochs[K] != epochs[0]


def test_resume_across_epochs_is_bit_exact(variant_list, tmp_path):
    save = str(tmp_path / "ckpt")
    flags = [*FLAGS, "--train-iters", "16", "--data-file-list", variant_list]
    plan = tiny_plan(*flags, mock=False)
    dataset = build_streams(plan).train.stream.datasets[0]
    assert dataset.locate(16 * 4 - 1)[0] >= 1  # the run crosses into another variant
    full = train(plan, DistEnv())
    first = train(tiny_plan(*flags, "--save", save, "--exit-interval", "7", mock=False), DistEnv())
    second = train(tiny_plan(*flags, "--save", save, "--load", save, mock=False), DistEnv())
    assert first.losses + second.losses == full.losses
    assert first.tokens[0] + second.tokens[0] == full.tokens[0]
