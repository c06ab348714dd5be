"""Learning-rate schedule: decay style, warmup and decay lengths, floor."""

from __future__ import annotations

from dataclasses import dataclass

from megatron.config.fields import (
    SECTION,
    ConfigError,
    flag_name,
    knob,
    require_positive,
    require_ratio,
    require_registered,
)


def _at_most_one(obj: object, *names: str) -> None:
    given = [flag_name(n) for n in names if getattr(obj, n) is not None]
    if len(given) > 1:
        raise ConfigError(f"{given[0]}: give one of {', '.join(given)}, not several")


@dataclass(**SECTION)
class ScheduleConfig:
    """LR schedule (docs/design.md §2). Warmup is given in one unit at most; decay defaults to the run."""

    lr_decay_style: str = knob("cosine", names="megatron.schedules.registry:schedule_names")
    """Decay style, from the schedule registry; wsd is constant with --lr-constant-plus-cooldown."""
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
    lr_constant_plus_cooldown: bool = False
    """With --lr-decay-style constant: hold eta_max, then cool down over the run's last steps (WSD)."""
    lr_constant_plus_cooldown_frac: float = 0.05
    """Cooldown length of --lr-constant-plus-cooldown as a fraction of the decay steps."""
    lr_cooldown_shape: str = knob("1-sqrt", names="megatron.schedules.functions:cooldown_shapes")
    """Cooldown shape of the WSD schedule: 1-sqrt, linear, cosine, square or exp."""
    lr_rsqrt_cooldown: int | None = None
    """Linear cooldown steps at the end of the rsqrt schedule (default: none)."""
    constant_lr: float | None = None
    """Infinite schedules: the absolute constant LR eta_const (min-lr < eta_const <= lr)."""
    timescale: float = 10.0
    """Infinite inverse-square-root: the cooldown's timescale alpha."""
    lr_cooldown_fraction: float = 0.1
    """Infinite schedules: cooldown eta_max -> eta_const as a fraction of the decay steps."""
    lr_finder: bool = False
    """Run an LR range test over the run's steps instead of training (docs/design.md §3)."""
    lr_finder_start: float = 1e-7
    """First LR of the range test."""
    lr_finder_end: float = 10.0
    """Last LR of the range test."""
    lr_finder_dir: str | None = None
    """Where lr_finder.csv/.png go (default: --save, else outputs/lr_finder)."""
    lr_constant_fraction: float | None = None
    """Infinite schedules: constant phase as a fraction of the decay steps; the rest anneals to
    eta_min. Default: constant to the end (no anneal)."""

    def __post_init__(self) -> None:
        require_registered(self, "lr_decay_style", "style")
        if self.min_lr < 0:
            raise ConfigError(f"--min-lr: must be >= 0, got {self.min_lr}")
        require_positive(self, "lr_decay_iters", "lr_decay_samples", "lr_decay_tokens")
        require_ratio(self, "lr_warmup_fraction", "lr_constant_plus_cooldown_frac",
                      "lr_cooldown_fraction", "lr_constant_fraction")
        require_registered(self, "lr_cooldown_shape", "shape")
        if self.lr_constant_plus_cooldown and self.lr_decay_style not in ("constant", "wsd"):
            raise ConfigError(
                "--lr-constant-plus-cooldown: needs --lr-decay-style constant (LR_DECAY_STYLE=constant), "
                f"got {self.lr_decay_style}"
            )
        require_positive(self, "lr_rsqrt_cooldown", "timescale", "lr_finder_start", "lr_finder_end")
        if self.lr_finder_end <= self.lr_finder_start:
            raise ConfigError(
                f"--lr-finder-end: {self.lr_finder_end} must be above --lr-finder-start {self.lr_finder_start}"
            )
        _at_most_one(self, "lr_warmup_iters", "lr_warmup_fraction", "lr_warmup_samples", "lr_warmup_tokens")
        _at_most_one(self, "lr_decay_iters", "lr_decay_samples", "lr_decay_tokens")
        for name in ("lr_warmup_iters", "lr_warmup_samples", "lr_warmup_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 0, got {value}")
