"""The DeepSpeed dict is generated from the plan; a user JSON may only add keys we do not own."""

from __future__ import annotations

import json

import pytest

from megatron.config import ConfigError, DistEnv, parse_args, resolve
from megatron.config.deepspeed import OWNED_KEYS, to_deepspeed_config

BASE = ["--mock-data", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
        "--train-iters", "10", "--micro-batch-size", "2", "--global-batch-size", "16"]


def ds_of(*flags: str, world: int = 2) -> dict:
    return to_deepspeed_config(resolve(parse_args([*BASE, *flags]).config, DistEnv(world_size=world)))


def test_generated_dict_snapshot():
    assert ds_of("--zero-stage", "1", "--clip-grad", "0.5", "--bf16") == {
        "train_batch_size": 16,
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 4,
        "gradient_clipping": 0.5,
        "zero_optimization": {"stage": 1},
        "bf16": {"enabled": True},
        "fp16": {"enabled": False, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def test_cpu_optimizer_offloads():
    assert ds_of("--zero-stage", "2", "--cpu-optimizer")["zero_optimization"]["offload_optimizer"] == {
        "device": "cpu",
        "pin_memory": True,
    }


def test_user_json_adds_unowned_keys(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"overlap_comm": True, "reduce_bucket_size": 5e7}, "comms_logger": {"enabled": True}}))
    ds = ds_of("--zero-stage", "2", "--deepspeed-config", str(path))
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 5e7}
    assert ds["comms_logger"] == {"enabled": True}


@pytest.mark.parametrize("key", sorted(OWNED_KEYS))
def test_user_json_with_owned_key_is_rejected_even_when_equal(tmp_path, key):
    generated = ds_of("--zero-stage", "1")
    user: dict = {}
    node, parts = user, key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    value = generated
    for part in parts:
        value = value.get(part, {"device": "cpu"}) if isinstance(value, dict) else value
    node[parts[-1]] = value
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    with pytest.raises(ConfigError, match=rf"--deepspeed-config: .*'{key}' is set by {OWNED_KEYS[key]}"):
        ds_of("--zero-stage", "1", "--deepspeed-config", str(path))


def test_missing_user_json(tmp_path):
    with pytest.raises(ConfigError, match=r"--deepspeed-config: no such file"):
        ds_of("--deepspeed-config", str(tmp_path / "nope.json"))
