"""The DeepSpeed config, generated from the plan.

We own batch sizes, accumulation, clipping, precision, optimizer, scheduler and the ZeRO stage.
A user ``--deepspeed-config`` JSON may add keys we do not own (ZeRO sub-options, communication
tuning). It may also repeat a key we own, as Megatron-DeepSpeed scripts do, when the value
equals the one our flags resolve to (the agreement is logged once at start); a different value
is an error naming both places, because two owners of one knob disagreeing is how runs silently
diverge (the bigscience notes: mismatched accumulation "can fail silently").
"""

from __future__ import annotations

import copy
import json
from typing import Any

from megatron.config.fields import ConfigError
from megatron.plan.run import RunPlan

# Owned key -> the flag that owns it (shown in the error).
OWNED_KEYS: dict[str, str] = {
    "train_batch_size": "--global-batch-size",
    "train_micro_batch_size_per_gpu": "--micro-batch-size",
    "gradient_accumulation_steps": "--gradient-accumulation-steps",
    "gradient_clipping": "--clip-grad",
    "optimizer": "--optimizer",
    "scheduler": "--lr-decay-style",
    "bf16": "--bf16",
    "fp16": "--fp16",
    "zero_optimization.stage": "--zero-stage",
    "zero_optimization.offload_optimizer": "--cpu-optimizer",
}


def _generated(plan: RunPlan) -> dict[str, Any]:
    cfg = plan.config
    zero: dict[str, Any] = {"stage": cfg.parallel.zero_stage}
    if cfg.parallel.cpu_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    generated: dict[str, Any] = {
        "train_batch_size": plan.global_batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum_steps,
        "gradient_clipping": cfg.optim.clip_grad,
        "zero_optimization": zero,
        "bf16": {"enabled": plan.dtype == "bf16"},
        "fp16": {"enabled": plan.dtype == "fp16", "initial_scale_power": 16},
        # We bring our own optimizer (torch or ours), logged and checkpointed by us.
        "zero_allow_untested_optimizer": True,
        # Progress is reported by our loop; DeepSpeed's own prints would duplicate it.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if plan.dtype == "bf16" and cfg.train.accumulate_allreduce_grads_in_fp32:
        if cfg.parallel.zero_stage != 1:
            raise ConfigError(
                "--accumulate-allreduce-grads-in-fp32: DeepSpeed accumulates bf16 gradients in fp32 "
                f"only at --zero-stage 1 (its bf16 optimizer), got --zero-stage {cfg.parallel.zero_stage}"
            )
        generated["data_types"] = {"grad_accum_dtype": "fp32"}
    if cfg.parallel.sequence_parallel and plan.pp > 1:
        # DeepSpeed's pipeline sends 1/TP of an activation per TP rank and all-gathers it on the
        # next stage, which assumes TP ranks hold the same activation; sequence-parallel ranks
        # hold different sequence shards.
        generated["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
    return generated


def _leaves(value: Any, prefix: str) -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``[("prefix.a.b", 1)]`` (a non-dict value is one leaf)."""
    if not isinstance(value, dict) or not value:
        return [(prefix, value)]
    return [leaf for k, v in value.items() for leaf in _leaves(v, f"{prefix}.{k}")]


def _lookup(tree: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _owned_leaves(user: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(owned key, dotted leaf, user value) for every leaf the user sets under a key we own."""
    found = []
    for key in OWNED_KEYS:
        present, value = _lookup(user, key)
        if present:
            found += [(key, leaf, v) for leaf, v in _leaves(value, key)]
    return found


def _equal(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return type(ours) is type(theirs) and ours == theirs
    return ours == theirs


def check_owned_keys(user: dict[str, Any], generated: dict[str, Any], path: str) -> list[str]:
    """Compare the owned keys a user JSON repeats with the generated values.

    Returns:
        One line per agreeing value ("ds.json: train_batch_size=768 agrees with
        --global-batch-size").

    Raises:
        ConfigError: A value that differs from ours (or that we never set), naming the JSON key
            and the flag that owns it.
    """
    agreements, conflicts = [], []
    for key, leaf, value in _owned_leaves(user):
        flag = OWNED_KEYS[key]
        present, ours = _lookup(generated, leaf)
        shown = json.dumps(value)
        if present and _equal(ours, value):
            agreements.append(f"{path}: {leaf}={shown} agrees with {flag}")
        elif present:
            conflicts.append(f"{leaf}={shown} but {flag} gives {json.dumps(ours)}")
        else:
            conflicts.append(f"{leaf}={shown} is not set by this framework ({flag} owns {key})")
    if conflicts:
        raise ConfigError(
            f"--deepspeed-config: {path} disagrees with the flags: {'; '.join(conflicts)}. "
            "Remove the key from the JSON (the flags, or their train_alcf.sh variables, set it) "
            "or change the flag"
        )
    return agreements


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_user_deepspeed_config(path: str) -> dict[str, Any]:
    """Read a ``--deepspeed-config`` JSON file.

    Raises:
        ConfigError: Unreadable or not a JSON object.
    """
    try:
        with open(path) as f:
            user = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--deepspeed-config: cannot read {path}: {e}") from None
    if not isinstance(user, dict):
        raise ConfigError(f"--deepspeed-config: {path} must hold a JSON object")
    return user


def deepspeed_agreements(plan: RunPlan) -> list[str]:
    """The owned keys the user JSON repeats with our values (for the start-up log)."""
    path = plan.config.parallel.deepspeed_config
    if path is None:
        return []
    return check_owned_keys(load_user_deepspeed_config(path), _generated(plan), path)


def to_deepspeed_config(plan: RunPlan) -> dict[str, Any]:
    """The DeepSpeed config dict for ``plan``, with the user's extra keys merged in.

    Raises:
        ConfigError: The user JSON sets an owned key to another value than the flags.
    """
    generated = _generated(plan)
    path = plan.config.parallel.deepspeed_config
    if path is None:
        return generated
    user = load_user_deepspeed_config(path)
    check_owned_keys(user, generated, path)
    return _merge(generated, user)
