"""TP=2, DP=2 and PP=2 with metadata loss masks reproduce one process (same losses, same trainable
token counts): the mask travels with its samples through every layout."""

from __future__ import annotations

import json

import pytest

from megatron.config import DistEnv
from megatron.config.data import DataConfig
from megatron.metadata.local_preprocess import LocalOptions, tokenize_records
from megatron.metadata.package_corpus import package_records
from megatron.metadata.sampling import SamplingOptions
from megatron.metadata.preprocess import MetadataOptions, tokenize_with_metadata
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed


@pytest.fixture(scope="module")
def masked_list(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("masks")
    path = root / "docs.jsonl"
    with open(path, "w") as f:
        for r in package_records()[:30]:
            f.write(json.dumps({**r, "text": r["text"][:200]}) + "\n")
    stats = tokenize_with_metadata(
        [str(path)],
        str(root / "pk"),
        DataConfig(tokenizer_type="byte"),
        MetadataOptions(keys=("url", "title"), probability=1.0),  # every document: masks in any batch
    )
    data_list = root / "list.txt"
    data_list.write_text(f"1 {stats.text_prefix} packages\n")
    return str(data_list)


@pytest.fixture(scope="module")
def local_list(tmp_path_factory) -> str:
    """Records with inline html/entity metadata (masked) and 2 pre-drawn variants."""
    from tests.unit.metadata.test_local_preprocess import ORDER, _records_jsonl

    root = tmp_path_factory.mktemp("local")
    path = root / "docs.jsonl"
    with open(path, "w") as f:
        for r in package_records()[:8]:
            f.write(json.dumps({**r, "text": r["text"][:100]}) + "\n")
    sampling = SamplingOptions(random_sample=True, weights={"html": 1, "entity": 1, "url": 1})
    stats = tokenize_records(
        [_records_jsonl(str(path), root / "r.jsonl")], str(root / "loc"),
        DataConfig(tokenizer_type="byte"), LocalOptions(ORDER, sampling, variants=2),
    )  # fmt: skip
    data_list = root / "list.txt"
    data_list.write_text(f"1 {stats.text_prefixes[0]} html\n")
    return str(data_list)


@pytest.fixture(params=["prefix", "local"])
def any_list(request, masked_list, local_list) -> str:
    return masked_list if request.param == "prefix" else local_list


def _run(env: DistEnv, flags: list[str]) -> tuple[list[float], tuple[int, int]]:
    result = train(
        tiny_plan(
            "--train-iters", "4", "--lr", "1e-2", "--split", "90,10,0", *flags, env=env, mock=False
        ),
        env,
    )
    return [*result.losses, result.valid_loss], result.tokens


def test_tensor_parallel_with_masks_matches_single_process(any_list):
    flags = ["--data-file-list", any_list]
    reference = _run(DistEnv(), flags)
    assert reference[1][0] < reference[1][1]  # some targets are metadata
    ranks = run_distributed(_run, ["--tensor-model-parallel-size", "2", *flags])
    for losses, tokens in ranks:
        assert losses == pytest.approx(reference[0], rel=1e-4)
        assert tokens == reference[1]


def test_data_parallel_with_masks_matches_single_process(any_list):
    # One process, 2 micro-batches of 2 == two ranks, one micro-batch of 2 each.
    flags = ["--data-file-list", any_list, "--micro-batch-size", "2"]
    reference = _run(DistEnv(), [*flags, "--gradient-accumulation-steps", "2"])
    ranks = run_distributed(_run, flags)
    for losses, tokens in ranks:
        assert losses == pytest.approx(reference[0], rel=1e-4)
        assert tokens == reference[1]


def test_pipeline_parallel_with_masks_matches_single_process(any_list):
    flags = ["--data-file-list", any_list, "--gradient-accumulation-steps", "2"]
    reference = _run(DistEnv(), flags)
    ranks = run_distributed(_run, ["--pipeline-model-parallel-size", "2", *flags])
    for losses, tokens in ranks:
        assert losses == pytest.approx(reference[0], rel=1e-4)
        assert tokens == reference[1]
