"""The DeepSpeed config, generated from the plan.

We own batch sizes, accumulation, clipping, precision, optimizer, scheduler and the ZeRO stage.
A user ``--deepspeed-config`` JSON may add keys we do not own (ZeRO sub-options, communication
tuning); an owned key in it is an error even when its value matches, because two owners of one
knob is how runs silently diverge (the bigscience notes: mismatched accumulation "can fail
silently").
"""

from __future__ import annotations

import copy
import json
from typing import Any

from megatron.config.fields import ConfigError
from megatron.config.plan import RunPlan

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
    return {
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


def _owned_keys_in(user: dict[str, Any]) -> list[str]:
    found = []
    for key in OWNED_KEYS:
        node: Any = user
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            found.append(key)
    return found


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
        ConfigError: Unreadable, not a JSON object, or holding a key we own.
    """
    try:
        with open(path) as f:
            user = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--deepspeed-config: cannot read {path}: {e}") from None
    if not isinstance(user, dict):
        raise ConfigError(f"--deepspeed-config: {path} must hold a JSON object")
    owned = _owned_keys_in(user)
    if owned:
        detail = "; ".join(f"'{key}' is set by {OWNED_KEYS[key]}" for key in owned)
        raise ConfigError(
            f"--deepspeed-config: {path} sets keys this framework owns ({detail}); remove them "
            "from the JSON and use the flags (or their train_alcf.sh variables) instead"
        )
    return user


def to_deepspeed_config(plan: RunPlan) -> dict[str, Any]:
    """The DeepSpeed config dict for ``plan``, with the user's extra keys merged in."""
    generated = _generated(plan)
    path = plan.config.parallel.deepspeed_config
    if path is None:
        return generated
    return _merge(generated, load_user_deepspeed_config(path))
