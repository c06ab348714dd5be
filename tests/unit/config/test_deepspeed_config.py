"""The DeepSpeed dict is generated from the plan; a user JSON may add keys we do not own and
repeat owned keys only with the values the flags resolve to (issue 22)."""

from __future__ import annotations

import json
import re

import pytest

from megatron.config import ConfigError, DistEnv, parse_args
from megatron.plan import resolve
from megatron.plan.deepspeed import OWNED_KEYS, deepspeed_agreements, to_deepspeed_config

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--num-layers", "--hidden-size", "--num-attention-heads", "--mock-data",
    "--micro-batch-size", "--global-batch-size", "--train-iters", "--bf16", "--clip-grad", "--zero-stage",
    "--cpu-optimizer", "--deepspeed-config")

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


def _user_json_repeating(tmp_path, key: str, generated: dict, value=None) -> str:
    """A user JSON that sets owned ``key`` to our generated value (or to ``value``)."""
    user: dict = {}
    node, parts = user, key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    ours = generated
    for part in parts:
        ours = ours[part]
    node[parts[-1]] = ours if value is None else value
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    return str(path)


# Owned keys with a generated value under --zero-stage 1 --cpu-optimizer (optimizer and
# scheduler are never generated: we bring our own).
GENERATED_OWNED = sorted(set(OWNED_KEYS) - {"optimizer", "scheduler"})


@pytest.mark.parametrize("key", GENERATED_OWNED)
def test_user_json_repeating_an_owned_key_with_our_value_is_accepted(tmp_path, key):
    flags = ("--zero-stage", "1", "--cpu-optimizer")
    generated = ds_of(*flags)
    path = _user_json_repeating(tmp_path, key, generated)
    assert ds_of(*flags, "--deepspeed-config", path) == generated
    plan = resolve(parse_args([*BASE, *flags, "--deepspeed-config", path]).config, DistEnv(world_size=2))
    lines = deepspeed_agreements(plan)
    assert lines and all(f"agrees with {OWNED_KEYS[key]}" in line for line in lines)
    assert lines[0].startswith(f"{path}: {key}")


def test_agreement_line_names_value_and_flag(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": 16, "bf16": {"enabled": True}}))
    plan = resolve(parse_args([*BASE, "--bf16", "--deepspeed-config", str(path)]).config, DistEnv(world_size=2))
    assert deepspeed_agreements(plan) == [
        f"{path}: train_batch_size=16 agrees with --global-batch-size",
        f"{path}: bf16.enabled=true agrees with --bf16",
    ]


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("train_batch_size", 32, "train_batch_size=32 but --global-batch-size gives 16"),
        ("train_micro_batch_size_per_gpu", 4, "train_micro_batch_size_per_gpu=4 but --micro-batch-size gives 2"),
        ("gradient_accumulation_steps", 2, "gradient_accumulation_steps=2 but --gradient-accumulation-steps gives 4"),
        ("gradient_clipping", 0.5, "gradient_clipping=0.5 but --clip-grad gives 1.0"),
        ("zero_optimization.stage", 2, "zero_optimization.stage=2 but --zero-stage gives 1"),
        ("bf16.enabled", True, "bf16.enabled=true but --bf16 gives false"),
    ],
)
def test_user_json_disagreeing_with_a_flag_names_key_and_flag(tmp_path, key, value, shown):
    path = _user_json_repeating(tmp_path, key, ds_of("--zero-stage", "1"), value)
    with pytest.raises(ConfigError, match=rf"--deepspeed-config: .*ds.json disagrees with the flags: {re.escape(shown)}"):
        ds_of("--zero-stage", "1", "--deepspeed-config", path)


@pytest.mark.parametrize("key", ["optimizer", "scheduler"])
def test_user_json_optimizer_or_scheduler_is_refused(tmp_path, key):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({key: {"type": "Adam", "params": {"lr": 1e-3}}}))
    with pytest.raises(ConfigError, match=rf"{key}.type=\"Adam\" is not set by this framework \({OWNED_KEYS[key]} owns {key}\)"):
        ds_of("--deepspeed-config", str(path))


def test_missing_user_json(tmp_path):
    with pytest.raises(ConfigError, match=r"--deepspeed-config: no such file"):
        ds_of("--deepspeed-config", str(tmp_path / "nope.json"))
