"""Checkpoint saving and loading."""

from __future__ import annotations

from dataclasses import dataclass

from megatron.config.fields import SECTION, ConfigError, require_positive


@dataclass(**SECTION)
class CheckpointConfig:
    """Where checkpoints go, how often, and what a load restores."""

    save: str | None = None
    """Directory to save checkpoints in."""
    load: str | None = None
    """Directory to resume from (its ``latest`` checkpoint)."""
    save_interval: int | None = None
    """Save every this many iterations (a final checkpoint is always written with --save)."""
    finetune: bool = False
    """Load weights only: iteration, optimizer, scheduler and data position start fresh."""
    no_load_optim: bool = False
    """Do not restore optimizer states on load."""
    no_load_rng: bool = False
    """Do not restore random-number-generator states on load."""

    def __post_init__(self) -> None:
        require_positive(self, "save_interval")
        if self.save_interval is not None and self.save is None:
            raise ConfigError("--save-interval: needs --save (a directory to write to)")
        if self.finetune and self.load is None:
            raise ConfigError("--finetune: needs --load (the checkpoint to start from)")
