"""The seam for everything a training run does besides the step: the ``Callback`` protocol.

A training-time feature (a regularizer, a diagnostic, a meter, the LR range test) is one class
implementing the hooks it needs; the trainer holds an ordered ``Callbacks`` list and calls every
hook in that order:

- ``extra_loss_terms(out)``: per training micro-batch, tensors added to the objective's loss.
  The engine differentiates ``objective.reduce(token losses, mask) + sum(terms)``, summed left
  to right in callback order, so a term adds exactly its value; a term marked ``reported`` is
  also added (detached) to the logged loss. ``needs_logits`` asks the engine to keep the
  micro-batch's logits for the terms (LwF's distillation);
- ``on_step_end(run, step)``: after each optimizer step (logging, statistics, early stop via
  ``stop_reason``);
- ``on_save(step_dir)``: side files written into a checkpoint's step directory before its
  completion marker; ``state_dict()`` / ``load_state_dict(state)``: small per-rank state stored in
  the checkpoint's client state under the callback's ``name``;
- ``on_restore(run, restored)``: after ``--load`` (``restored.where`` is None when it held no
  checkpoint yet);
- ``on_run_start(run, state)`` / ``on_run_end(run, state, result)``: around the training loop;
  ``on_run_end`` may return a replaced result (the LR range test adds its suggestion).

A callback with ``probe = True`` turns the run into a probe (the LR range test): nothing is
loaded, evaluated or saved. See ``docs/trainer.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from megatron.data.loader import Batch
from megatron.trainer.protocols import RunView
from megatron.trainer.state import TrainResult, TrainState


@dataclass(frozen=True, slots=True)
class LossTerm:
    """One extra term of a micro-batch's loss.

    Attributes:
        name: What it is (``ewc``, ``lwf``), for messages.
        value: A 0-d tensor, differentiable in the model's parameters.
        reported: Also add it (detached) to the loss that is logged.
    """

    name: str
    value: torch.Tensor
    reported: bool = False


@dataclass(frozen=True, slots=True)
class MicroBatchOutput:
    """What a loss term may read of one training micro-batch's forward pass.

    Attributes:
        batch: The micro-batch.
        module: The model being trained.
        logits: Its vocab-parallel logits, when a callback has ``needs_logits`` (else None).
        forward_seconds: Host time of the forward pass and the objective's reduction.
    """

    batch: Batch
    module: torch.nn.Module
    logits: torch.Tensor | None
    forward_seconds: float


@dataclass(frozen=True, slots=True)
class StepEnd:
    """One finished optimizer step.

    Attributes:
        iteration: Steps done, this one included (1-based).
        lr: The LR it took.
        loss: Its loss (a device tensor until read).
        batches: Its micro-batches.
        log_due: ``iteration`` ends a log interval (``--log-interval``).
    """

    iteration: int
    lr: float
    loss: torch.Tensor | float
    batches: list[Batch]
    log_due: bool


@dataclass(frozen=True, slots=True)
class Restored:
    """What ``--load`` gave a run.

    Attributes:
        where: The checkpoint directory loaded, or None (``--load`` holds no checkpoint yet).
        metadata: Its run metadata (empty when ``where`` is None).
        stage_start: The load starts a new stage (``--finetune``, or another directory than
            ``--save``) rather than resuming inside one.
        iteration: The iteration the run continues from.
    """

    where: str | None
    metadata: dict[str, Any]
    stage_start: bool
    iteration: int = 0


class Callback:
    """The hooks a training-time feature may implement; every default does nothing.

    Attributes:
        name: Key of the callback's ``state_dict`` in a checkpoint (unique within a run).
        needs_logits: Ask the engine to keep each training micro-batch's logits.
        probe: The run is a probe (nothing loaded, evaluated or saved; the LR range test).
    """

    name: str = "callback"
    needs_logits: bool = False
    probe: ClassVar[bool] = False

    def extra_loss_terms(self, out: MicroBatchOutput) -> list[LossTerm]:  # noqa: ARG002
        """Terms added to one training micro-batch's loss."""
        return []

    def on_step_end(self, run: RunView, step: StepEnd) -> None:
        """After optimizer step ``step.iteration``."""

    @property
    def stop_reason(self) -> str | None:
        """Why the run must stop now (checked after every step), or None."""
        return None

    def on_save(self, step_dir: str) -> None:
        """Write side files into ``step_dir`` (every rank, before the completion marker)."""

    def state_dict(self) -> dict[str, Any]:
        """Small per-rank state kept in the checkpoint's client state (empty: nothing kept)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def on_restore(self, run: RunView, restored: Restored) -> None:
        """After ``--load`` (not called without ``--load`` nor under ``--skip-train``)."""

    def on_run_start(self, run: RunView, state: TrainState) -> None:
        """Before the first step of this launch."""

    def on_run_end(self, run: RunView, state: TrainState, result: TrainResult) -> TrainResult:
        """After the loop (also after a stop); return ``result`` or a replaced one."""
        return result


CLIENT_KEY = "callbacks"
"""Key of the callbacks' states in a checkpoint's client state."""


class Callbacks(Sequence[Callback]):
    """A run's callbacks, called in list order.

    Args:
        callbacks: The callbacks (None entries, features that are off, are dropped).
    """

    def __init__(self, callbacks: Sequence[Callback | None] = ()):
        self._items = [c for c in callbacks if c is not None]
        names = [c.name for c in self._items]
        if len(set(names)) != len(names):
            raise ValueError(f"callback names must be unique: {names}")
        self.needs_logits = any(c.needs_logits for c in self._items)
        # The callbacks that add loss terms (override the hook): without any, the engine's step
        # is the objective's alone.
        self.loss_terms = [c for c in self._items if type(c).extra_loss_terms is not Callback.extra_loss_terms]
        self.probe = any(c.probe for c in self._items)

    def __getitem__(self, index: int) -> Callback:  # type: ignore[override]
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Callback]:
        return iter(self._items)

    def get(self, kind: type) -> Callback | None:
        """The callback of class ``kind`` (or a subclass), or None."""
        return next((c for c in self._items if isinstance(c, kind)), None)

    def loss(self, objective_loss: torch.Tensor, out: MicroBatchOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to differentiate, loss to report): the objective's loss plus every extra term."""
        total = reported = objective_loss
        for callback in self.loss_terms:
            for term in callback.extra_loss_terms(out):
                total = total + term.value
                if term.reported:
                    reported = reported + term.value.detach()
        return total, reported

    def on_step_end(self, run: RunView, step: StepEnd) -> str | None:
        """Every ``on_step_end``; then the first callback's stop reason, or None."""
        for callback in self._items:
            callback.on_step_end(run, step)
        return next((r for c in self._items if (r := c.stop_reason) is not None), None)

    def on_save(self, step_dir: str) -> None:
        """Every callback's side files."""
        for callback in self._items:
            callback.on_save(step_dir)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """``{name: state}`` of the callbacks that keep state."""
        return {c.name: s for c in self._items if (s := c.state_dict())}

    def load_state_dict(self, states: dict[str, dict[str, Any]]) -> None:
        """Give each callback its saved state (callbacks absent from ``states`` keep theirs)."""
        for callback in self._items:
            if callback.name in states:
                callback.load_state_dict(states[callback.name])

    def on_restore(self, run: RunView, restored: Restored) -> None:
        """Every ``on_restore``."""
        for callback in self._items:
            callback.on_restore(run, restored)

    def on_run_start(self, run: RunView, state: TrainState) -> None:
        """Every ``on_run_start``."""
        for callback in self._items:
            callback.on_run_start(run, state)

    def on_run_end(self, run: RunView, state: TrainState, result: TrainResult) -> TrainResult:
        """Every ``on_run_end``, each seeing the previous one's result."""
        for callback in self._items:
            result = callback.on_run_end(run, state, result)
        return result


def replace_result(result: TrainResult, **changes: Any) -> TrainResult:
    """``result`` with some fields replaced (for ``on_run_end``)."""
    return dataclasses.replace(result, **changes)
