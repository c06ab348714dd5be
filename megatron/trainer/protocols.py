"""What code outside the training loop may read of a run: two small read-only views.

The ``Trainer`` and the ``TrainEngine`` satisfy these protocols; callbacks (``callbacks.py``),
the restore policy (``resume.py``), the EWC/LwF regularizers and the optimizer-state statistics
are typed with them, never with the concrete classes (which would import the loop) nor ``Any``.
A new training-time feature reads the run through ``RunView`` and, if it needs more, the view
grows one named attribute here, where a reader of the code sees every dependency at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from megatron.checkpointing.universal import UniversalCheckpoint
from megatron.plan.run import RunPlan
from megatron.data.builder import DataStreams
from megatron.data.loader import BatchReader
from megatron.distributed import ParallelContext
from megatron.objectives.registry import ObjectiveSpec
from megatron.optimizer.registry import OptimizerSpec
from megatron.schedules.scheduler import LRScheduler
from megatron.trainer.metrics import Reporter
from megatron.trainer.step_values import StepValues

if TYPE_CHECKING:  # third-party types only (no megatron module: the import graph stays acyclic)
    from deepspeed import DeepSpeedEngine


class EngineView(Protocol):
    """The model, optimizer and schedule of a run (``engine.TrainEngine``)."""

    plan: RunPlan
    ctx: ParallelContext
    engine: DeepSpeedEngine
    """The DeepSpeed engine (forward, backward, step, checkpoint files)."""
    optimizer: torch.optim.Optimizer
    """The client optimizer (its ``state`` holds the moments)."""
    optimizer_spec: OptimizerSpec
    objective: ObjectiveSpec
    scheduler: LRScheduler

    @property
    def module(self) -> torch.nn.Module:
        """The unwrapped model (dense GPT or this rank's pipeline stage)."""

    def eval_mode(self) -> None:
        """Model in eval mode; schedule-free optimizers swap in their averaged weights."""

    def train_mode(self) -> None:
        """The inverse of ``eval_mode``."""


class RunView(Protocol):
    """One run as its callbacks and its checkpoint owner see it (``loop.Trainer``)."""

    plan: RunPlan
    ctx: ParallelContext
    engine: EngineView
    streams: DataStreams
    reporter: Reporter
    """Log lines, TensorBoard and the event stream."""
    universal: UniversalCheckpoint | None
    """The universal checkpoint opened before the engine was built (``--universal-checkpoint``)."""
    losses: StepValues
    """Every training step's loss of this launch."""

    def reader(self, stream: object) -> BatchReader:
        """A batch reader over ``stream`` with the run's batch geometry."""
