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
    """Directory to resume from (its ``latest`` checkpoint); auto: the run's own --save (train_alcf.sh's default, so a relaunch resumes)."""
    save_interval: int | None = None
    """Save every this many iterations (a final checkpoint is always written with --save)."""
    keep_last_n_checkpoints: int | None = None
    """Keep only the newest N checkpoints in --save (the pre-cooldown one is always kept)."""
    universal_checkpoint: bool = False
    """--load names a universal checkpoint (tools/convert_checkpoint.py): any TP/PP/DP, ZeRO stage."""
    finetune: bool = False
    """Load weights only: iteration, optimizer, scheduler and data position start fresh."""
    no_load_optim: bool = False
    """Do not restore optimizer states on load."""
    no_load_rng: bool = False
    """Do not restore random-number-generator states on load."""
    override_opt_param_scheduler: bool = False
    """On resume, follow this command line's LR schedule even if the checkpoint's differs."""
    use_checkpoint_opt_param_scheduler: bool = False
    """On resume, follow the checkpoint's LR schedule (its lr, warmup, decay) and ignore this one's."""
    async_save: bool = False
    """Write checkpoints from a background thread: a save stalls training only to copy the states
    to host memory; `latest` moves once every rank's files are on disk (docs/checkpoints.md)."""
    reset_data_state: bool = False
    """On load, keep iteration, optimizer and LR schedule but restart the data stream at sample 0
    of this run's --data-file-list (a continual stage on new data: AuroraGPT / MeCo)."""

    def __post_init__(self) -> None:
        require_positive(self, "save_interval")
        require_positive(self, "keep_last_n_checkpoints")
        if self.universal_checkpoint and self.load is None:
            raise ConfigError("--universal-checkpoint: needs --load (the converted checkpoint)")
        if self.async_save and self.save is None:
            raise ConfigError("--async-save: needs --save (a directory to write to)")
        if self.save_interval is not None and self.save is None:
            raise ConfigError("--save-interval: needs --save (a directory to write to)")
        if self.override_opt_param_scheduler and self.use_checkpoint_opt_param_scheduler:
            raise ConfigError(
                "--override-opt-param-scheduler: cannot be combined with "
                "--use-checkpoint-opt-param-scheduler; pick whose LR schedule to follow"
            )
        if self.reset_data_state and (self.load is None or self.finetune):
            raise ConfigError(
                "--reset-data-state: needs --load and no --finetune (it keeps the optimizer and "
                "schedule of the loaded checkpoint; --finetune already starts a new data stream)"
            )
        if self.finetune and self.load is None:
            raise ConfigError("--finetune: needs --load (the checkpoint to start from)")
