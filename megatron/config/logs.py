"""What the run reports and where."""

from __future__ import annotations

from dataclasses import dataclass

from megatron.config.fields import SECTION, require_positive


@dataclass(**SECTION)
class LoggingConfig:
    """Console and TensorBoard logging."""

    log_interval: int = 100
    """Print a progress line (and write TensorBoard scalars) every this many iterations."""
    tensorboard_dir: str | None = None
    """Write TensorBoard event files here."""
    log_optimizer_states_to_tensorboard: bool = False
    """Every log interval, log the L2 norm and max |x| of each optimizer state (exp_avg, momentum_buffer, hessian, ...) over the whole model (console and TensorBoard)."""

    def __post_init__(self) -> None:
        require_positive(self, "log_interval")
