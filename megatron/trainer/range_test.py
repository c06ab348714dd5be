"""``--lr-finder``: the LR range test as a callback of an ordinary run (docs/design.md §3).

The run is a probe (``Callback.probe``): nothing is loaded, evaluated or saved. The LR follows
the range-test schedule the plan selected; after every step the smoothed loss is recorded, and
the run stops when it diverges. At the end the weights and optimizer state are put back,
``lr_finder.csv``/``.png`` are written and an LR is suggested (in the run's result).
"""

from __future__ import annotations

import copy
import logging

from megatron.schedules.lr_finder import LRFinderRecorder
from megatron.trainer.callbacks import Callback, StepEnd, replace_result
from megatron.trainer.protocols import RunView
from megatron.trainer.state import TrainResult, TrainState

log = logging.getLogger(__name__)

DIVERGED = "loss diverged (smoothed loss above 4x its minimum)"


class LRFinder(Callback):
    """Records (LR, loss) per step, stops on divergence, restores the model, suggests an LR."""

    name = "lr_finder"
    probe = True

    def __init__(self) -> None:
        self.recorder = LRFinderRecorder()
        self.diverged = False
        self.snapshot: tuple[dict, dict] | None = None

    def on_run_start(self, run: RunView, state: TrainState) -> None:
        """Keep the weights and optimizer state to put back at the end."""
        engine = run.engine
        self.snapshot = (copy.deepcopy(engine.module.state_dict()), copy.deepcopy(engine.optimizer.state_dict()))

    def on_step_end(self, run: RunView, step: StepEnd) -> None:
        """Record the step's LR and loss."""
        self.diverged = self.diverged or self.recorder.record(step.lr, run.losses[-1])

    @property
    def stop_reason(self) -> str | None:
        """Stop once the smoothed loss diverged."""
        return DIVERGED if self.diverged else None

    def on_run_end(self, run: RunView, state: TrainState, result: TrainResult) -> TrainResult:
        """Put the model back; write the curve and the suggestion (logging rank)."""
        if self.snapshot is not None:
            run.engine.module.load_state_dict(self.snapshot[0])
            run.engine.optimizer.load_state_dict(self.snapshot[1])
        cfg = run.plan.config
        directory = cfg.schedule.lr_finder_dir or cfg.checkpoint.save or "outputs/lr_finder"
        suggestion = None
        if run.ctx.is_logging_rank:
            suggestion = self.recorder.write(directory)
            log.info("LR finder: %d steps%s; suggested LR %.3e (steepest descent), %.3e (minimum / 10); "
                     "see %s/lr_finder.png", state.iteration, f", {result.stop_reason}" if result.stop_reason else "",
                     suggestion[0], suggestion[1], directory)
        return replace_result(result, train_loss=run.losses[-1], lr_suggestion=suggestion,
                              valid_history=())
