"""Muon's options (flags ``--muon-*``) and the torch-free arithmetic its optimizer shares with
the registration in ``muon.py``: Newton-Schulz constants, shape scales, costs and matrix owners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron.config.fields import SECTION, ConfigError, flag_name

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Quintic Newton-Schulz coefficients (a, b, c)."""
NS_EPS = 1e-7
"""Added to the Frobenius norm before dividing by it."""
LR_SCALES = ("original", "match_rms_adamw")


def _flag(field_name: str) -> str:
    return flag_name(field_name, "muon")


@dataclass(**SECTION)
class MuonOptions:
    """Muon hyperparameters (flags --muon-*)."""

    momentum: float = 0.95
    """Muon momentum beta of the matrix groups, in [0, 1)."""
    nesterov: bool = True
    """Use Nesterov momentum in the matrix groups."""
    ns_steps: int = 5
    """Newton-Schulz iterations that orthogonalize the momentum (>= 1)."""
    lr_scale: str = "original"
    """Per-matrix LR shape scaling: original = sqrt(max(1, rows/cols)); match_rms_adamw = 0.2 * sqrt(max(rows, cols))."""
    adamw_lr: float | None = None
    """LR of the AdamW side groups (embeddings, head, norms, biases); default: --lr. Follows the LR schedule."""
    adamw_beta1: float | None = None
    """beta1 of the AdamW side groups; default: --adam-beta1."""
    adamw_beta2: float | None = None
    """beta2 of the AdamW side groups; default: --adam-beta2."""
    adamw_eps: float | None = None
    """Epsilon of the AdamW side groups; default: --adam-eps."""
    split_fused: bool = False
    """Orthogonalize Q, K, V of the fused QKV weight (and gate, up of the SwiGLU fc1) as separate matrices (Moonlight); default: each fused weight is one matrix (Keller Jordan)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"{_flag('momentum')}: must be in [0, 1), got {self.momentum}")
        if not 1 <= self.ns_steps < 100:
            raise ConfigError(f"{_flag('ns_steps')}: must be in [1, 100), got {self.ns_steps}")
        if self.lr_scale not in LR_SCALES:
            raise ConfigError(
                f"{_flag('lr_scale')}: must be one of {', '.join(LR_SCALES)}, got {self.lr_scale!r}"
            )
        for name in ("adamw_lr", "adamw_eps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{_flag(name)}: must be > 0, got {value}")
        for name in ("adamw_beta1", "adamw_beta2"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"{_flag(name)}: must be in [0, 1), got {value}")


def shape_scale(mode: str, rows: int, cols: int) -> float:
    """The LR multiplier of a ``rows x cols`` matrix under ``--muon-lr-scale mode``."""
    if mode == "original":
        return math.sqrt(max(1.0, rows / cols))
    if mode == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown muon lr scale {mode!r}; known: {LR_SCALES}")


def ns_cost(rows: int, cols: int, steps: int) -> tuple[int, int]:
    """Multiply-add flops of ``steps`` Newton-Schulz iterations on a ``rows x cols`` matrix:
    (direct on X, on the Gram matrix). With ``m <= n`` the sides: direct
    ``steps * (4 m^2 n + 2 m^3)``; Gram ``4 m^2 n + (8 steps - 6) m^3``."""
    m, n = sorted((rows, cols))
    return steps * (4 * m * m * n + 2 * m**3), 4 * m * m * n + (8 * steps - 6) * m**3


def assign_owners(shapes: list[tuple[int, int]], ranks: int, steps: int) -> list[int]:
    """The rank that orthogonalizes each matrix: largest cost first, to the least-loaded rank.

    Cost: ``ns_cost`` of the cheaper form. Deterministic: every rank computes the same assignment.
    """
    from megatron.optimizer.owners import balance

    return balance([min(ns_cost(*shape, steps=steps)) for shape in shapes], ranks)
