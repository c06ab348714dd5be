"""Weights & Biases beside TensorBoard: the same scalars, plus the resolved config once.

Opened by the ``Reporter`` on the logging rank only, when ``--wandb-project`` is set. W&B reads
its own environment (``WANDB_MODE=offline`` writes the run under ``--wandb-save-dir`` with no
network; ``wandb sync`` uploads it later); our code passes everything else explicitly. A missing
``wandb`` package is refused when the config is built (``LoggingConfig``), never at the first log.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from megatron.checkpointing.metadata import flat_config
from megatron.plan.run import RunPlan

log = logging.getLogger(__name__)


class WandbWriter:
    """One W&B run: ``scalar`` mirrors ``SummaryWriter.add_scalar``.

    Args:
        plan: The resolved run (its config and derived values are logged as the run config).
    """

    def __init__(self, plan: RunPlan):
        import wandb

        logs = plan.config.logging
        if logs.wandb_save_dir:
            os.makedirs(logs.wandb_save_dir, exist_ok=True)
        config: dict[str, Any] = {flag.lstrip("-"): v for flag, v in flat_config(plan).items()}
        config.update({f"plan/{k}": v for k, v in plan.summary().items()})
        self.run = wandb.init(
            project=logs.wandb_project,
            name=logs.wandb_exp_name,
            group=logs.wandb_group,
            dir=logs.wandb_save_dir,
            config=config,
        )
        log.info("W&B run %s (project %s) in %s", self.run.name, logs.wandb_project, self.run.dir)

    def scalar(self, name: str, value: float, step: int) -> None:
        """Log one scalar at ``step`` (scalars of one step merge into one W&B history row)."""
        self.run.log({name: value}, step=step)

    def close(self) -> None:
        """Finish the run (flushes and, offline, closes the run file)."""
        self.run.finish()
