"""Optimizer choice and its hyperparameters, common and per-optimizer (namespaced)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from megatron.config.fields import (
    SECTION,
    ConfigError,
    call_ref,
    knob,
    require_positive,
    require_registered,
)


def _default_options() -> dict[str, Any]:
    return call_ref("megatron.optimizer.registry:default_options")


@dataclass(**SECTION)
class OptimConfig:
    """Optimizer (docs/design.md §4). Per-optimizer flags are namespaced: --muon-momentum, ..."""

    optimizer: str = knob("adamw", aliases=("--opt",), names="megatron.optimizer.registry:OPTIMIZERS")
    """Optimizer name, from the optimizer registry."""
    lr: float = 3e-4
    """Peak learning rate eta_max."""
    weight_decay: float = 0.01
    """Decoupled weight decay (not applied to biases, norms or other 1-D parameters)."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    sgd_momentum: float = 0.9
    """Momentum of SGD."""
    options: dict[str, Any] = field(default_factory=_default_options)
    """Per-optimizer option sections (flags --<optimizer>-<name>), keyed by optimizer."""

    def __post_init__(self) -> None:
        require_registered(self, "optimizer", "optimizer")
        require_positive(self, "lr", "adam_eps")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay: must be >= 0, got {self.weight_decay}")
        if self.clip_grad < 0:
            raise ConfigError(f"--clip-grad: must be >= 0 (0 disables), got {self.clip_grad}")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be in [0, 1), got {value}")
