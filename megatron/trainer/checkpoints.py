"""The one owner of a run's checkpoints: ``CheckpointManager``.

It decides WHEN a checkpoint is written and WHAT goes into it; ``checkpointing/checkpoint.py``
writes and commits the files (DeepSpeed's states, the completion marker, the ``latest`` pointers)
and knows nothing of runs. The manager owns:

- the ``--save`` lock (one writer per directory) and the ``--load`` directory check;
- the restore policy (``resume.py``: metadata checks, DeepSpeed states, schedule, RNG, data
  position, the callbacks' ``on_restore`` and saved states) and what follows from it: a relaunch
  of a finished run does nothing, a checkpoint already in ``--save`` is not written again;
- the cadence: every ``--save-interval`` steps, at the step before the LR cooldown (marked in
  ``pre_cooldown_checkpoint.txt``), when the run stops early and at the end; no routine save
  inside a streak of non-finite steps;
- the contents: run metadata, the client state (RNG, iteration, universal-conversion info, what
  a converter needs, the callbacks' ``state_dict``) and the callbacks' side files (EWC/LwF);
- retention (``--keep-last-n-checkpoints``) after each save.

A background writer would replace ``_write`` only: everything before it decides and assembles,
everything after it (the pre-cooldown mark, pruning, the ``save`` event) must follow the commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from megatron.checkpointing.async_save import finish_async_save
from megatron.checkpointing.checkpoint import (
    checkpoint_tag,
    lock_save_dir,
    mark_pre_cooldown,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
)
from megatron.checkpointing.layout import UNIVERSAL_CHECKPOINT_INFO, deepspeed_universal_info
from megatron.checkpointing.lifecycle import check_load_dir, finished_message, same_directory
from megatron.checkpointing.lock import DirectoryLock
from megatron.checkpointing.metadata import client_info, run_metadata
from megatron.checkpointing.reader import CLIENT_KEY
from megatron.checkpointing.universal import UniversalCheckpoint
from megatron.plan.run import RunPlan
from megatron.distributed import ParallelContext
from megatron.schedules.registry import cooldown_start
from megatron.trainer import resume
from megatron.trainer.callbacks import CLIENT_KEY as CALLBACKS_KEY
from megatron.trainer.callbacks import Callbacks
from megatron.trainer.protocols import RunView
from megatron.trainer.state import TrainState, data_state

log = logging.getLogger(__name__)


class CheckpointManager:
    """When and what a run saves, and what it restores (module docstring).

    Args:
        plan: The resolved run.
        ctx: This rank's parallel placement.
    """

    def __init__(self, plan: RunPlan, ctx: ParallelContext):
        self.plan = plan
        self.ctx = ctx
        self.cfg = plan.config.checkpoint
        self.cooldown_start = cooldown_start(plan.schedule_state)  # the pre-cooldown checkpoint's iteration
        self.saved_iteration: int | None = None  # the iteration whose checkpoint exists in --save
        self._lock: DirectoryLock | None = None

    # ---- directories ----------------------------------------------------------------------

    def acquire(self) -> None:
        """Take ``--save``'s lock (collective; rank 0 holds it).

        Raises:
            CheckpointError: Another live run holds it.
        """
        self._lock = lock_save_dir(self.cfg.save, self.ctx.device)

    def release(self) -> None:
        """Give the lock back (no-op when not held)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def check_load_dir(self) -> None:
        """``--load`` names an existing directory (a typo must not train from random weights)."""
        check_load_dir(self.cfg)

    def open_universal(self) -> UniversalCheckpoint | None:
        """``--universal-checkpoint``: open and check it (before the model is built)."""
        return resume.open_universal(self.plan)

    # ---- restore ----------------------------------------------------------------------------

    def restore(self, run: RunView, callbacks: Callbacks) -> TrainState:
        """Resume from ``--load`` (``resume.restore``); a checkpoint loaded from ``--save`` itself
        is not saved again."""
        state = resume.restore(run, callbacks)
        if state.loaded_from is not None and same_directory(self.cfg.load, self.cfg.save):
            self.saved_iteration = state.iteration
        return state

    def finished(self, state: TrainState) -> str | None:
        """The log line of a relaunch whose loaded checkpoint is final (nothing to do), or None."""
        if state.loaded_from is None:
            return None
        return finished_message(state.loaded_from, state.iteration, self.plan.train_iters)

    # ---- save -------------------------------------------------------------------------------

    def due(self, iteration: int, *, stopping: bool, nonfinite_streak: bool) -> bool:
        """Whether the loop saves after step ``iteration``: when stopping early, or every
        ``--save-interval`` steps and before the cooldown, except inside a non-finite streak.
        (The final checkpoint is ``save``'s caller's, at the end of the run.)"""
        if stopping:
            return True
        if nonfinite_streak:
            return False
        interval = self.cfg.save_interval
        routine = bool(interval) and iteration % interval == 0 and iteration < self.plan.train_iters
        return routine or iteration == self.cooldown_start

    def save(self, run: RunView, callbacks: Callbacks, state: TrainState) -> str | None:
        """Checkpoint ``state`` (weights as the optimizer's eval mode defines them, e.g.
        schedule-free x); the step directory, or None when there is nothing to write."""
        if self.cfg.save is None or self.saved_iteration == state.iteration:
            return None
        started = time.perf_counter()
        engine = run.engine
        engine.eval_mode()
        try:
            metadata = run_metadata(self.plan, state, engine.scheduler.state_dict(),
                                    data_state(run.streams.train.stream, state.consumed_samples))
            client = self.client_state(run, callbacks, state, metadata)
            path = self._write(run, state.iteration, metadata, client, callbacks.on_save)
        finally:
            engine.train_mode()
        self.saved_iteration = state.iteration
        self._after_commit(run, state.iteration)
        seconds = time.perf_counter() - started
        run.reporter.events.write("save", iteration=state.iteration, directory=self.cfg.save,
                                  tag=checkpoint_tag(state.iteration), seconds=round(seconds, 3))
        run.reporter.exclude(seconds)
        return path

    def client_state(self, run: RunView, callbacks: Callbacks, state: TrainState,
                     metadata: dict[str, Any]) -> dict[str, Any]:
        """What each rank stores in DeepSpeed's model-state file besides the weights."""
        return {
            "rng": rng_state(),
            "iteration": state.iteration,  # DeepSpeed's ds_to_universal reads these two
            UNIVERSAL_CHECKPOINT_INFO: deepspeed_universal_info(self.plan.model),
            CLIENT_KEY: client_info(run.engine, self.ctx, metadata),
            CALLBACKS_KEY: callbacks.state_dict(),
        }

    def _write(self, run: RunView, iteration: int, metadata: dict[str, Any], client: dict[str, Any],
               side_files: Callable[[str], None]) -> str:
        """The seam to the writer: every rank writes, then the checkpoint is committed."""
        return save_checkpoint(run.engine.engine, self.cfg.save, iteration, metadata, client, side_files)

    def _after_commit(self, run: RunView, iteration: int) -> None:
        """The pre-cooldown mark and retention, once the checkpoint is committed."""
        if iteration == self.cooldown_start:
            finish_async_save(run.engine.engine, abandon=False)  # the mark names a committed step
            mark_pre_cooldown(self.cfg.save, iteration)
        if self.cfg.keep_last_n_checkpoints:
            prune_checkpoints(self.cfg.save, self.cfg.keep_last_n_checkpoints)
