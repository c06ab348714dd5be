"""``--objective ar``: next-token prediction with causal attention (the default).

Labels are the inputs shifted by one; the loss is the mean cross-entropy over the loss mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from megatron.config.fields import ConfigError, flag_name
from megatron.config.objective import ObjectiveConfig
from megatron.objectives.registry import register_objective


def _masked_mean(losses: Any, loss_mask: Any) -> Any:
    from megatron.model.gpt import masked_mean

    return masked_mean(losses, loss_mask)


def _meter_add(meter: Any, losses: Any, loss_mask: Any, dataset_ids: Any) -> None:
    meter.add(losses, loss_mask, dataset_ids)


def refuse_mdm_flags(cfg: Any, spec: Any) -> None:
    """A masked-diffusion flag given to another objective would silently do nothing: refuse it.

    Raises:
        ConfigError: Naming the first such flag.
    """
    default = ObjectiveConfig()
    for f in dataclasses.fields(ObjectiveConfig):
        if f.name != "objective" and getattr(cfg.objective, f.name) != getattr(default, f.name):
            raise ConfigError(
                f"{flag_name(f.name)}: only used with --objective mdm (this run: --objective "
                f"{cfg.objective.objective}); drop it or add --objective mdm"
            )


@register_objective(
    "ar",
    causal=True,
    reduce=_masked_mean,
    meter_add=_meter_add,
    check=refuse_mdm_flags,
    eval_draws=lambda cfg: 1,
    attention_flops="causal attention counted as full: 12*L*d*s per token (docs/design.md §10; "
    "a causal kernel does about half of it)",
)
def ar_batches(plan: Any, reader: Any, consumed: int, *, iteration: int, split: str, draw: int) -> list:
    """The reader's micro-batches as they are: inputs, next tokens, loss mask."""
    return reader.step_batches(consumed)
