"""The metadata cooldown plan (spec oracle 5): 90 + 10 iterations, one LR schedule (no rewarm),
stage 2 reads only the plain lists, optimizer carried."""

from __future__ import annotations

import json

import pytest
import yaml

from megatron.config import DistEnv
from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError
from megatron.data.builder import build_streams
from megatron.data.preprocess import tokenize_to_indexed
from megatron.metadata.cooldown import CooldownRequest, cooldown_plan, stage_flags
from megatron.metadata.preprocess import MetadataOptions, tokenize_with_metadata
from megatron.schedules.registry import build_schedule_fn
from megatron.trainer.loop import train
from tests.helpers import tiny_plan
from tools.metadata_cooldown_plan import main as plan_main

REQ = dict(
    name="meco",
    output_dir="out",
    metadata_data_file_list="meta.txt",
    plain_data_file_list="plain.txt",
)


def test_plan_has_two_stages_90_and_10_with_carried_optimizer():
    plan = cooldown_plan(
        CooldownRequest(**REQ, cooldown_fraction=0.1, train_iters=100, warmup_iters=5)
    )
    first, second = plan["stages"]
    assert (first["data"], first["train_iters"], first["iterations"]) == ("meta.txt", 90, [0, 90])
    assert (second["data"], second["train_iters"], second["iterations"]) == (
        "plain.txt",
        10,
        [90, 100],
    )
    assert second["reset_data_state"] is True and "reset_data_state" not in first
    method = plan["method"]
    assert method["carry_optimizer"] is True and method["warmup_usage"] == "first"
    assert method["lr_schedule_iters"] == 100 and plan["output_dir"] == "out"


def test_one_schedule_across_both_stages_no_rewarm():
    plan = cooldown_plan(
        CooldownRequest(**REQ, cooldown_fraction=0.1, train_iters=100, warmup_iters=5)
    )
    fns = [build_schedule_fn(tiny_plan(*_schedule_only(stage_flags(plan, k)))) for k in range(2)]
    (f1, fp1), (f2, fp2) = fns
    assert fp1 == fp2  # the checkpoint's schedule is resumed as is
    single, _ = build_schedule_fn(
        tiny_plan(
            "--train-iters",
            "100",
            "--lr",
            "0.003",
            "--min-lr",
            "0.0003",
            "--lr-decay-style",
            "cosine",
            "--lr-warmup-iters",
            "5",
        )
    )
    assert [f2(s) for s in range(90, 100)] == [single(s) for s in range(90, 100)]
    assert f2(90) < f2(89) < 1.0  # still decaying at the stage boundary: no rewarm
    assert f1(0) < f1(4) < f1(5) == 1.0  # the warmup is in stage 1


def _schedule_only(flags: list[str]) -> list[str]:
    """Stage flags minus the data list (the schedule does not depend on it)."""
    i = flags.index("--data-file-list")
    return flags[:i] + flags[i + 2 :]


def test_bad_requests():
    with pytest.raises(ConfigError, match="--metadata-cooldown-fraction"):
        CooldownRequest(**REQ, cooldown_fraction=1.0)
    with pytest.raises(ConfigError, match="--plain-data-file-list"):
        CooldownRequest(**{**REQ, "plain_data_file_list": "meta.txt"})
    with pytest.raises(ConfigError, match="--lr-warmup-iters"):
        CooldownRequest(**REQ, train_iters=10, warmup_iters=9)
    with pytest.raises(ConfigError, match="--train-iters"):
        CooldownRequest(**REQ, train_iters=3, cooldown_fraction=0.1, warmup_iters=0)


def test_tool_writes_yaml(tmp_path, capsys):
    out = tmp_path / "plan.yaml"
    assert (
        plan_main(
            [
                "--output-dir",
                "o",
                "--metadata-data-file-list",
                "m.txt",
                "--plain-data-file-list",
                "p.txt",
                "--train-iters",
                "100",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert yaml.safe_load(out.read_text())["stages"][1]["train_iters"] == 10
    assert (
        plan_main(
            [
                "--output-dir",
                "o",
                "--metadata-data-file-list",
                "m.txt",
                "--plain-data-file-list",
                "m.txt",
                "--train-iters",
                "100",
            ]
        )
        == 2
    )
    assert "--plain-data-file-list" in capsys.readouterr().err


@pytest.mark.slow
def test_two_stage_run_continues_the_schedule_on_plain_lists(package_jsonl, tmp_path):
    byte = DataConfig(tokenizer_type="byte")
    short = tmp_path / "short.jsonl"  # 200-character texts: metadata is a third of the tokens
    with open(package_jsonl) as f:
        short.write_text(
            "".join(json.dumps({**r, "text": r["text"][:200]}) + "\n" for r in map(json.loads, f))
        )
    meta = tokenize_with_metadata(
        [str(short)],
        str(tmp_path / "m"),
        byte,
        MetadataOptions(keys=("url", "title"), probability=1.0),
    )
    plain = tokenize_to_indexed([str(short)], str(tmp_path / "p"), byte).prefixes["text"]
    (tmp_path / "meta.txt").write_text(f"1 {meta.text_prefix} packages\n")
    (tmp_path / "plain.txt").write_text(f"1 {plain} packages\n")
    plan = cooldown_plan(
        CooldownRequest(
            name="meco",
            output_dir=str(tmp_path),
            metadata_data_file_list=str(tmp_path / "meta.txt"),
            plain_data_file_list=str(tmp_path / "plain.txt"),
            cooldown_fraction=0.1,
            train_iters=20,
            warmup_iters=2,
        )
    )
    save = str(tmp_path / "ckpt")
    common = ["--split", "100,0,0", "--save", save]
    stage1 = tiny_plan(*stage_flags(plan, 0), *common, mock=False)
    stage2 = tiny_plan(*stage_flags(plan, 1), *common, "--load", save, mock=False)
    first = train(stage1, DistEnv())
    assert first.iteration == 18 and first.tokens[0] < first.tokens[1]  # metadata masked
    streams = build_streams(stage2)
    assert [d.name for d in streams.train.stream.datasets] == [f"{plain}:train"]  # plain lists only
    second = train(stage2, DistEnv())  # resumes the same schedule: no schedule-change error
    assert second.iteration == 20 and len(second.losses) == 2
    assert second.tokens[0] == second.tokens[1]  # nothing masked in the cooldown
