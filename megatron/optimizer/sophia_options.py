"""Sophia-G's options (flags ``--sophia-*``): torch-free, shared by the registration in
``sophia.py`` and the optimizer in ``sophia_torch.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron.config.fields import SECTION, ConfigError, flag_name


def _flag(field_name: str) -> str:
    return flag_name(field_name, "sophia")


@dataclass(**SECTION)
class SophiaOptions:
    """Sophia-G hyperparameters (flags --sophia-*); weight decay is --weight-decay."""

    beta1: float = 0.965
    """Momentum decay."""
    beta2: float = 0.99
    """Decay of the Hessian-diagonal EMA (applied at each Hessian refresh)."""
    rho: float = 0.04
    """Hessian scale in the denominator (update clipped to [-1, 1]); tune so 10-50% of coordinates stay unclipped (small models need larger values)."""
    hessian_interval: int = 10
    """Steps between Gauss-Newton-Bartlett Hessian estimates (k); each costs one extra forward/backward."""
    eps: float = 1e-12
    """Floor of rho * h in the denominator."""

    def __post_init__(self) -> None:
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{_flag(name)}: must be in [0, 1), got {value}")
        for name in ("rho", "eps"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{_flag(name)}: must be > 0, got {value}")
        if self.hessian_interval < 1:
            raise ConfigError(f"{_flag('hessian_interval')}: must be >= 1, got {self.hessian_interval}")
