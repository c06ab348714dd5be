"""TiC-LM period folders: discovery order, selection flags, refusals, shard round trip, stages."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from megatron.config.fields import ConfigError
from megatron.continual.periods import discover_periods, find_sources, select_periods
from megatron.continual.plan import PlanError, load_plan
from megatron.data.indexed import open_indexed
from megatron.data.readers import InputError
from megatron.data.webdataset import convert_manifest, write_shards
from tools import continual_run


def make_dirs(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).mkdir(parents=True)
    return str(root)


def keys(periods):
    return [p.key for p in periods]


def test_discovery_sorts_numbers_as_numbers_and_skips_hidden(tmp_path):
    parent = make_dirs(tmp_path, ["202001", "201305", "201312", ".cache", "_tmp"])
    (tmp_path / "notes.txt").write_text("not a period")
    assert keys(discover_periods(parent)) == ["201305", "201312", "202001"]
    other = make_dirs(tmp_path / "b", ["p10", "p9", "p2"])
    assert keys(discover_periods(other)) == ["p2", "p9", "p10"]


def test_discovery_refuses_empty_and_unsortable(tmp_path):
    with pytest.raises(ConfigError, match="holds no period folder"):
        discover_periods(make_dirs(tmp_path / "empty", []))
    with pytest.raises(ConfigError, match=r"do not sort \(names mix numbers and words"):
        discover_periods(make_dirs(tmp_path / "mixed", ["201305", "latest"]))
    with pytest.raises(ConfigError, match="no such directory"):
        discover_periods(str(tmp_path / "absent"))


@pytest.mark.parametrize("selection, expected", [
    ({}, ["201305", "201312", "201401", "201406", "202407"]),
    ({"starting_timestep": "201312"}, ["201312", "201401", "201406", "202407"]),
    ({"ending_timestep": "201401"}, ["201305", "201312", "201401"]),
    ({"time_range": "201312:201406"}, ["201312", "201401", "201406"]),
    ({"num_timesteps": 2}, ["201305", "201312"]),
    ({"starting_timestep": "201310", "num_timesteps": 2}, ["201312", "201401"]),
])
def test_selection_flags(tmp_path, selection, expected):
    parent = make_dirs(tmp_path, ["202407", "201305", "201401", "201312", "201406"])
    assert keys(select_periods(discover_periods(parent), selection)) == expected


def test_selection_refusals(tmp_path):
    periods = discover_periods(make_dirs(tmp_path, ["201305", "201312"]))
    with pytest.raises(ConfigError, match="no period left"):
        select_periods(periods, {"starting_timestep": "202001"})
    with pytest.raises(ConfigError, match="--time-range: expected A:B"):
        select_periods(periods, {"time_range": "201305"})


def test_webdataset_shards_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, 258, size=int(rng.integers(1, 40))).tolist() for _ in range(23)]
    manifest = write_shards(str(tmp_path / "201305"), sequences, per_shard=5)
    assert [json.loads(line)["num_sequences"] for line in open(manifest)] == [5, 5, 5, 5, 3]
    assert convert_manifest(manifest, str(tmp_path / "out"), vocab_size=258) == 23
    dataset = open_indexed(str(tmp_path / "out"))
    assert [dataset[i].tolist() for i in range(len(dataset))] == sequences


def test_webdataset_refuses_wrong_counts_and_ids(tmp_path):
    manifest = write_shards(str(tmp_path / "a"), [[1, 2], [3]], per_shard=2)
    with open(manifest, "w") as f:
        f.write(json.dumps({"shard": "shard-00000", "num_sequences": 3}) + "\n")
    with pytest.raises(InputError, match="holds 2 sequences, the manifest says 3"):
        convert_manifest(manifest, str(tmp_path / "o1"), vocab_size=258)
    manifest = write_shards(str(tmp_path / "b"), [[1, 999]], per_shard=2)
    with pytest.raises(InputError, match=r"token id outside the tokenizer's vocabulary \[0, 258\)"):
        convert_manifest(manifest, str(tmp_path / "o2"), vocab_size=258)
    assert not os.path.exists(str(tmp_path / "o2.bin"))


def test_try_balanced_manifest_picks_the_balanced_one(tmp_path):
    folder = tmp_path / "201305"
    write_shards(str(folder), [[1, 2, 3]] * 4, per_shard=2)
    write_shards(str(folder), [[1, 2, 3]] * 2, per_shard=2, manifest="manifest_balanced.jsonl")
    assert find_sources(str(folder), "manifest.jsonl", False).files[0].endswith("/manifest.jsonl")
    assert find_sources(str(folder), "manifest.jsonl", True).files[0].endswith("manifest_balanced.jsonl")
    other = tmp_path / "201312"
    write_shards(str(other), [[4]], per_shard=1)
    assert find_sources(str(other), "manifest.jsonl", True).files[0].endswith("/manifest.jsonl")


PLAN = """\
name: periods
output_dir: {out}
args: {{tokenizer_type: byte}}
train_iters_per_stage: 5
method: {{lr: 1.0e-3}}
eval_after_each_stage: true
"""


@pytest.fixture()
def periods_dir(tmp_path):
    """Three periods, one of each kind: raw JSONL, open_lm shards, indexed + eval/ folder."""
    root = tmp_path / "periods"
    (root / "201305").mkdir(parents=True)
    with open(root / "201305" / "docs.jsonl", "w") as f:
        f.writelines(json.dumps({"text": f"document {i} of May"}) + "\n" for i in range(20))
    write_shards(str(root / "201312"), [list(b"shard seq %d" % i) for i in range(12)], per_shard=5)
    (root / "201401" / "eval").mkdir(parents=True)
    for sub, count in (("", 7), ("eval", 3)):
        sequences = [list(b"jan %d" % i) for i in range(count)]
        write_shards(str(tmp_path / "tmp" / sub), sequences, per_shard=10)
        convert_manifest(str(tmp_path / "tmp" / sub / "manifest.jsonl"),
                         str(root / "201401" / sub / "data"), vocab_size=258)
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(out=tmp_path / "out"))
    return root, str(plan)


def read_list(path):
    return [line.split() for line in open(path)]


def test_plan_makes_one_stage_per_period_and_reuses_preparation(periods_dir):
    root, plan_path = periods_dir
    plan = load_plan(plan_path, {}, {"periods_from": str(root)})
    assert [s.key for s in plan.stages] == ["201305", "201312", "201401"]
    may, dec, jan = plan.stages
    # Raw JSONL: tokenized, every 10th document held out.
    train, held = open_indexed(read_list(may.data)[0][1]), open_indexed(read_list(may.eval_data)[0][1])
    assert (len(train), len(held)) == (18, 2)
    assert bytes(held[0].tolist()[:-1]) == b"document 9 of May"
    # Shards: sequences as documents, unchanged (held-out: every 10th).
    dec_train = open_indexed(read_list(dec.data)[0][1])
    assert [bytes(dec_train[i].tolist()) for i in range(2)] == [b"shard seq 0", b"shard seq 1"]
    # Indexed with an eval/ folder: used as they are.
    assert read_list(jan.data) == [["1.0", str(root / "201401" / "data"), "201401"]]
    assert read_list(jan.eval_data) == [["1.0", str(root / "201401" / "eval" / "data"), "201401"]]
    marker = os.path.join(os.path.dirname(may.data), "PREPARED.json")
    before = os.stat(marker).st_mtime_ns
    again = load_plan(plan_path, {"--num-timesteps": 2}, {"periods_from": str(root)})
    assert [s.key for s in again.stages] == ["201305", "201312"]
    assert os.stat(marker).st_mtime_ns == before


def test_plan_refusals(periods_dir, tmp_path):
    root, plan_path = periods_dir
    (root / "201502").mkdir()
    with pytest.raises(ConfigError, match=r"201502 holds no data: expected manifest.jsonl"):
        load_plan(plan_path, {}, {"periods_from": str(root)})
    with pytest.raises(ConfigError, match="no period left"):
        load_plan(plan_path, {"--time-range": "2020:2021"}, {"periods_from": str(root)})
    with open(plan_path, "a") as f:
        f.write(f"periods_from: {tmp_path}/elsewhere\n")
    with pytest.raises(PlanError, match="periods_from: .* in the plan, .* on the command line"):
        load_plan(plan_path, {}, {"periods_from": str(root)})


def test_continual_run_flags_dry_run(periods_dir, capsys):
    root, plan_path = periods_dir
    argv = ["--plan", plan_path, "--parent-dataset-manifest", str(root), "--suffixes",
            "/manifest.jsonl", "--try-balanced-manifest", "--starting-timestep", "201312", "--dry-run"]
    assert continual_run.main(argv) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("stage ")] == [
        "stage 201312", "stage 201401"]
