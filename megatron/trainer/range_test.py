"""``--lr-finder``: the LR range test as a run of the ``Trainer`` (docs/design.md §3)."""

from __future__ import annotations

import copy
import logging

from megatron.schedules.lr_finder import LRFinderRecorder
from megatron.trainer.loop import Trainer, TrainResult
from megatron.trainer.state import TrainState

log = logging.getLogger(__name__)


def range_test(trainer: Trainer) -> TrainResult:
    """``--lr-finder``: ramp the LR over the run's steps, record the smoothed loss, stop on
    divergence, write ``lr_finder.csv``/``.png`` and suggest an LR. Weights and optimizer state
    are restored afterwards; nothing is evaluated or saved."""
    cfg = trainer.cfg
    engine = trainer.engine
    snapshot = (copy.deepcopy(engine.module.state_dict()), copy.deepcopy(engine.optimizer.state_dict()))
    recorder = LRFinderRecorder()
    state = TrainState()
    stop_reason = None
    try:
        while state.iteration < trainer.plan.train_iters:
            trainer.train_step(state)
            if recorder.record(engine.scheduler.current_lr(), trainer.losses[-1]):
                stop_reason = "loss diverged (smoothed loss above 4x its minimum)"
                break
    finally:
        engine.module.load_state_dict(snapshot[0])
        engine.optimizer.load_state_dict(snapshot[1])
        trainer.reporter.close()
        trainer.stop.close()
    directory = cfg.schedule.lr_finder_dir or cfg.checkpoint.save or "outputs/lr_finder"
    suggestion = None
    if trainer.ctx.is_logging_rank:
        suggestion = recorder.write(directory)
        log.info("LR finder: %d steps%s; suggested LR %.3e (steepest descent), %.3e (minimum / 10); "
                 "see %s/lr_finder.png", state.iteration, f", {stop_reason}" if stop_reason else "",
                 suggestion[0], suggestion[1], directory)
    return TrainResult(iteration=state.iteration, train_loss=trainer.losses[-1], valid_loss=None,
                       test_loss=None, losses=tuple(trainer.losses), stop_reason=stop_reason,
                       lr_suggestion=suggestion)
