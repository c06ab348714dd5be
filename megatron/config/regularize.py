"""Continual-learning regularizers of a stage: EWC and LwF (spec continual.md sections 4, 5, 7).

Both anchor on the weights a stage starts from (a ``--finetune`` load, or any load from a
directory other than ``--save``); a resume inside the stage restores the saved anchor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron.config.fields import SECTION, ConfigError, require_positive


@dataclass(**SECTION)
class RegularizeConfig:
    """EWC (elastic weight consolidation) and LwF (learning without forgetting)."""

    ewc_weight: float = 0.0
    """EWC strength lambda; 0 = off. The Fisher is a sum of squared batch-mean gradients (TiC-LM's estimator, tiny values: its runs use 1e7), not the per-sample Fisher."""
    ewc_num_iterations: int = 1000
    """Global batches N the Fisher is summed over; the penalty gradient is (lambda / N) F (theta - theta*)."""
    ewc_fisher_data: Literal["current", "previous"] = "current"
    """Fisher batches from this stage's training data (TiC-LM) or from the loaded checkpoint's training data list (textbook EWC)."""
    ewc_log_loss: bool = False
    """Add the EWC penalty (lambda / N) sum 1/2 F (theta - theta*)^2 to the logged training loss."""
    ewc_anchor_compat: bool = False
    """Sum the Fisher over N + 1 batches, as TiC-LM's loop does (its off-by-one)."""
    lwf_weight: float = 0.0
    """LwF strength: loss = LM loss + weight * distillation loss from the stage's initial weights; 0 = off."""
    lwf_kl: bool = False
    """Distill with KL(teacher || student) at --lwf-temperature; without it, cross-entropy on the teacher's argmax."""
    lwf_temperature: float = 2.0
    """Softmax temperature tau of both models in the LwF KL (no tau^2 factor, as TiC-LM)."""
    lwf_reduction: Literal["elementmean", "batchmean"] = "elementmean"
    """KL reduction: elementmean = per-token KL / vocabulary size (TiC-LM's torch 'mean'); batchmean = per-token KL."""

    def __post_init__(self) -> None:
        require_positive(self, "ewc_num_iterations", "lwf_temperature")
        for name in ("ewc_weight", "lwf_weight"):
            value = getattr(self, name)
            if not value >= 0 or value == float("inf"):
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag}: must be a finite number >= 0, got {value}")

    @property
    def ewc(self) -> bool:
        """EWC is on."""
        return self.ewc_weight > 0

    @property
    def lwf(self) -> bool:
        """LwF is on."""
        return self.lwf_weight > 0

    @property
    def fisher_batches(self) -> int:
        """Global batches the Fisher sums over (N, or N + 1 with --ewc-anchor-compat)."""
        return self.ewc_num_iterations + int(self.ewc_anchor_compat)
