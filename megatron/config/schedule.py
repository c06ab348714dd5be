"""Learning-rate schedule: decay style, warmup and decay lengths, floor."""

from __future__ import annotations

from dataclasses import dataclass

from megatron.config.fields import (
    SECTION,
    ConfigError,
    flag_name,
    require_positive,
    require_ratio,
)


def _at_most_one(obj: object, *names: str) -> None:
    given = [flag_name(n) for n in names if getattr(obj, n) is not None]
    if len(given) > 1:
        raise ConfigError(f"{given[0]}: give one of {', '.join(given)}, not several")


@dataclass(**SECTION)
class ScheduleConfig:
    """LR schedule (SPEC section 2). Warmup is given in one unit at most; decay defaults to the run."""

    lr_decay_style: str = "cosine"
    """Decay style, from the schedule registry (cosine, linear, constant, ...)."""
    min_lr: float = 0.0
    """LR floor eta_min reached at the end of the decay."""
    lr_warmup_iters: int | None = None
    """Linear warmup length in iterations."""
    lr_warmup_fraction: float | None = None
    """Warmup length as a fraction of the decay iterations (LR_WARMUP_FRACTION)."""
    lr_warmup_samples: int | None = None
    """Warmup length in samples."""
    lr_warmup_tokens: int | None = None
    """Warmup length in tokens."""
    lr_decay_iters: int | None = None
    """Iterations over which the LR decays; default: the whole run."""
    lr_decay_samples: int | None = None
    """Decay length in samples."""
    lr_decay_tokens: int | None = None
    """Decay length in tokens."""

    def __post_init__(self) -> None:
        from megatron.schedules.registry import SCHEDULES

        if self.lr_decay_style not in SCHEDULES:
            raise ConfigError(
                f"--lr-decay-style: unknown style {self.lr_decay_style!r}; known: {sorted(SCHEDULES)}"
            )
        if self.min_lr < 0:
            raise ConfigError(f"--min-lr: must be >= 0, got {self.min_lr}")
        require_positive(self, "lr_decay_iters", "lr_decay_samples", "lr_decay_tokens")
        require_ratio(self, "lr_warmup_fraction")
        _at_most_one(self, "lr_warmup_iters", "lr_warmup_fraction", "lr_warmup_samples", "lr_warmup_tokens")
        _at_most_one(self, "lr_decay_iters", "lr_decay_samples", "lr_decay_tokens")
        for name in ("lr_warmup_iters", "lr_warmup_samples", "lr_warmup_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 0, got {value}")
