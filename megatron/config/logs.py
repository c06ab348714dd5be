"""What the run reports and where."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from megatron.config.fields import SECTION, ConfigError, require_positive


@dataclass(**SECTION)
class LoggingConfig:
    """Console, TensorBoard and Weights & Biases logging."""

    log_interval: int = 100
    """Print a progress line (and write TensorBoard scalars) every this many iterations."""
    tensorboard_dir: str | None = None
    """Write TensorBoard event files here."""
    tensorboard_queue_size: int = 10
    """TensorBoard events buffered before they are written to disk (the writer's max_queue)."""
    log_optimizer_states_to_tensorboard: bool = False
    """Every log interval, log the L2 norm and max |x| of each optimizer state (exp_avg, momentum_buffer, hessian, ...) over the whole model (console and TensorBoard)."""
    log_timers_to_tensorboard: bool = False
    """Time the phases of each step (data, forward, backward, optimizer; data and whole step under pipeline parallelism) and log their mean ms per step every log interval (timers/*). Synchronizes the device around each phase."""
    log_batch_size_to_tensorboard: bool = False
    """Log the global batch size (samples per step) every log interval (train/batch_size)."""
    event_log: str | None = "auto"
    """Append the run's structured events (start, every step's loss/LR/throughput, evaluations, saves, end) to this JSONL file, read by the continual runner and tools; auto: <save>/events.jsonl (off without --save; beside the TensorBoard files with --skip-train); none: off."""
    wandb_project: str | None = None
    """Also log every TensorBoard scalar and the resolved config to this Weights & Biases project (needs the wandb package; WANDB_MODE=offline works without network)."""
    wandb_exp_name: str | None = None
    """Weights & Biases run name (default: W&B picks one)."""
    wandb_save_dir: str | None = None
    """Directory for W&B's run files (default: the working directory)."""
    wandb_group: str | None = None
    """Weights & Biases group of the run (e.g. one sweep or ablation)."""

    def __post_init__(self) -> None:
        require_positive(self, "log_interval", "tensorboard_queue_size")
        if self.wandb_project is None:
            for flag, value in (
                ("--wandb-exp-name", self.wandb_exp_name),
                ("--wandb-save-dir", self.wandb_save_dir),
                ("--wandb-group", self.wandb_group),
            ):
                if value is not None:
                    raise ConfigError(f"{flag}: needs --wandb-project (WANDB_PROJECT)")
        elif importlib.util.find_spec("wandb") is None:
            raise ConfigError(
                "--wandb-project: the wandb package is not installed; pip install wandb "
                "(or drop --wandb-project / WANDB_PROJECT)"
            )
