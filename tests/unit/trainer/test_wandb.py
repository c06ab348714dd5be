"""W&B beside TensorBoard (issue 13 section 5): offline, the run directory holds the same
scalars as the TensorBoard events, at the same steps, and the resolved config once."""

from __future__ import annotations

import glob
import json
import struct

import pytest

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import tiny_plan


def read_wandb_run(run_file: str) -> tuple[dict, list[dict]]:
    """The config and history rows of an offline ``run-*.wandb`` file (W&B's LevelDB-style log
    of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    with open(run_file, "rb") as f:
        data = f.read()
    block, pos, pending, rows, config = 32768, 7, b"", [], {}  # 7-byte header, 32 KiB blocks
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            kind = record.WhichOneof("record_type")
            if kind == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            elif kind in ("run", "config"):
                items = record.run.config.update if kind == "run" else record.config.update
                config.update({i.key: json.loads(i.value_json) for i in items})
    return config, rows


def test_offline_run_holds_the_tensorboard_scalars(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tb, wb = str(tmp_path / "tb"), str(tmp_path / "wb")
    train(tiny_plan("--train-iters", "4", "--log-interval", "2", "--eval-interval", "2",
                    "--tensorboard-dir", tb, "--wandb-project", "P", "--wandb-exp-name", "E",
                    "--wandb-save-dir", wb, "--wandb-group", "G"), DistEnv())
    acc = EventAccumulator(glob.glob(f"{tb}/events.*")[0])
    acc.Reload()
    config, rows = read_wandb_run(glob.glob(f"{wb}/wandb/offline-run-*/run-*.wandb")[0])
    assert (config["train-iters"], config["wandb-exp-name"], config["plan/global_batch_size"]) == (4, "E", 2)
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "valid/loss", "valid/ppl", "throughput/tokens_per_sec"} <= set(tags)
    for tag in tags:
        tensorboard = [(e.step, e.value) for e in acc.Scalars(tag)]
        wandb = [(row["_step"], row[tag]) for row in rows if tag in row]
        assert [s for s, _ in wandb] == [s for s, _ in tensorboard], tag
        assert [v for _, v in wandb] == pytest.approx([v for _, v in tensorboard], rel=1e-6), tag
