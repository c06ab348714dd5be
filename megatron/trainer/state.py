"""Training progress and the run metadata a checkpoint carries about it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from megatron.config.fields import ConfigError
from megatron.config.plan import RunPlan
from megatron.config.schema import config_values, iter_knobs

log = logging.getLogger(__name__)

METADATA_VERSION = 1


@dataclass
class TrainState:
    """Where the run is.

    Attributes:
        iteration: Completed optimizer steps.
        consumed_samples: Training samples consumed (the data position).
    """

    iteration: int = 0
    consumed_samples: int = 0


def flat_config(plan: RunPlan) -> dict[str, Any]:
    """The config as ``{flag: value}`` (JSON-friendly, diffable)."""
    values = config_values(plan.config)
    return {k.flag: values[k.path] for k in iter_knobs()}


def data_state(stream: object, consumed_samples: int) -> dict[str, Any] | None:
    """The training stream's position: per-dataset sample counts at ``consumed_samples``.

    With it a resumed run continues the blend in O(datasets), without rebuilding its prefix.
    """
    if not hasattr(stream, "counts_at"):
        return None
    return {"blend_counts": [int(c) for c in stream.counts_at(consumed_samples)]}


def restore_data_state(stream: object, consumed_samples: int, metadata: dict[str, Any]) -> None:
    """Continue the training stream at the checkpoint's position.

    Raises:
        ConfigError: The checkpoint's blend has another number of datasets (the data list
            changed); continuing would not be the same stream.
    """
    saved = (metadata.get("data") or {}).get("blend_counts")
    if saved is None or not hasattr(stream, "seek"):
        return
    try:
        stream.seek(consumed_samples, saved)
    except ValueError as e:
        raise ConfigError(
            f"--data-file-list: the checkpoint's data position does not fit this data list ({e}); "
            "use the checkpoint's list to resume, or --finetune to start a new data stream"
        ) from None


def run_metadata(
    plan: RunPlan,
    state: TrainState,
    scheduler_state: dict[str, Any],
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON metadata stored in every checkpoint."""
    return {
        "data": data,
        "metadata_version": METADATA_VERSION,
        "iteration": state.iteration,
        "consumed_samples": state.consumed_samples,
        "scheduler": scheduler_state,
        "config": flat_config(plan),
        "plan": plan.summary(),
        "model": {k: v for k, v in _model_fields(plan).items()},
    }


def _model_fields(plan: RunPlan) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(plan.model)


# Shape-defining fields of the model: a checkpoint with other values cannot be loaded.
SHAPE_FIELDS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "position_embedding",
    "normalization",
    "swiglu",
    "bias",
    "tie_embeddings",
)


def check_model_shape(plan: RunPlan, saved: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint whose model differs in shape, listing every difference.

    Raises:
        ConfigError: Shapes differ.
    """
    saved_model = saved.get("model", {})
    now = _model_fields(plan)
    diffs = [
        f"{name}: checkpoint {saved_model[name]!r}, this run {now[name]!r}"
        for name in SHAPE_FIELDS
        if name in saved_model and saved_model[name] != now[name]
    ]
    if diffs:
        raise ConfigError(
            f"--load: {where} holds a model of another shape ({'; '.join(diffs)}); set the model "
            "flags to the checkpoint's values"
        )


def log_config_diff(plan: RunPlan, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Log and return the flags whose value changed since the checkpoint: flag -> (old, new)."""
    before = saved.get("config", {})
    now = flat_config(plan)
    diff = {f: (before[f], v) for f, v in now.items() if f in before and before[f] != v}
    for flag, (old, new) in sorted(diff.items()):
        log.info("resume: %s was %r in the checkpoint, now %r", flag, old, new)
    return diff
