"""Distributed Shampoo's options (flags ``--dshampoo-*``) and its torch-free block arithmetic,
shared by the registration in ``shampoo.py`` and the optimizer in ``shampoo_torch.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron.config.fields import SECTION, ConfigError


@dataclass(**SECTION)
class DShampooOptions:
    """Options of ``--optimizer dshampoo`` (flags ``--dshampoo-<field>``)."""

    max_preconditioner_dim: int = 1024
    """Largest side of a Shampoo block; bigger matrices are split into blocks of at most this."""
    precondition_frequency: int = 20
    """Recompute the inverse 4th roots of the block statistics every this many steps."""
    start_preconditioning_step: int = 20
    """First step that uses the Shampoo direction; before it the grafting direction is applied."""
    epsilon: float = 1e-12
    """Damping of L and R before the inverse root, relative to their largest eigenvalue."""
    beta2: float = 1.0
    """EMA factor of the L/R statistics; 1.0 sums them (classic Shampoo)."""
    momentum: float = 0.9
    """EMA momentum on the grafted direction (m = momentum m + (1 - momentum) d); 0 disables."""
    grafting: Literal["adam", "sgd", "none"] = "adam"
    """Per-block norm of the step: Adam (RMSProp with --adam-beta2/--adam-eps), SGD, or none."""

    def __post_init__(self) -> None:
        for name in (
            "max_preconditioner_dim",
            "precondition_frequency",
            "start_preconditioning_step",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"--dshampoo-{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}"
                )
        if not self.epsilon > 0:
            raise ConfigError(f"--dshampoo-epsilon: must be > 0, got {self.epsilon}")
        if not 0.0 < self.beta2 <= 1.0:
            raise ConfigError(f"--dshampoo-beta2: must be in (0, 1], got {self.beta2}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"--dshampoo-momentum: must be in [0, 1), got {self.momentum}")


def block_slices(shape: tuple[int, int], max_dim: int) -> list[tuple[slice, slice]]:
    """Row-major blocks of a ``shape`` matrix, each side at most ``max_dim`` (remainder last)."""
    rows, cols = shape
    row_cuts = [slice(i, min(i + max_dim, rows)) for i in range(0, rows, max_dim)]
    col_cuts = [slice(j, min(j + max_dim, cols)) for j in range(0, cols, max_dim)]
    return [(r, c) for r in row_cuts for c in col_cuts]


def shampoo_cost(shape: tuple[int, int], max_dim: int, frequency: int) -> float:
    """Multiply-adds per step of one matrix's Shampoo work: per ``r x c`` block the statistics
    ``2 r c (r + c)``, the preconditioning ``r c (r + c)`` and the two eigendecompositions
    (~``9 n^3`` each) every ``frequency`` steps."""
    cost = 0.0
    for rows, cols in block_slices(shape, max_dim):
        r, c = rows.stop - rows.start, cols.stop - cols.start
        cost += 3 * r * c * (r + c) + 9 * (r**3 + c**3) / frequency
    return cost
