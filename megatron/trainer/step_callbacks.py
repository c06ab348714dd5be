"""The per-step reporting and diagnostics of a run, each a ``Callback`` (``callbacks.py``).

Each was an "enabled and due" block inside the training step; as callbacks the step itself is
only the step, and the order below is the order in which they run after it (the loop's list).
All of them act on log steps (``StepEnd.log_due``) except the coordinate check, which logs
every one of the first ``COORD_CHECK_ITERS`` steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from megatron.data.loader import Batch
from megatron.scaling.coord_check import CoordCheckLogger
from megatron.trainer.callbacks import Callback, StepEnd, replace_result
from megatron.trainer.corpus_loss import CorpusLoss
from megatron.trainer.optimizer_states import optimizer_state_stats
from megatron.trainer.protocols import RunView
from megatron.trainer.state import TrainResult, TrainState
from megatron.trainer.timers import PhaseTimers
from megatron.trainer.token_counts import TokenCounter


class IntervalReport(Callback):
    """The log interval's phase timers, the interval's step losses read off the device, and the
    trainable/consumed token counts.

    Args:
        timers: The engine's phase timers.
        tokens: The run's token counter.
    """

    name = "interval_report"

    def __init__(self, timers: PhaseTimers, tokens: TokenCounter):
        self.timers = timers
        self.tokens = tokens

    def on_step_end(self, run: RunView, step: StepEnd) -> None:
        """On log steps: timers, losses, tokens."""
        if step.log_due:
            run.reporter.on_timers(step.iteration, self.timers.collect())
            run.losses.flush()
            self.tokens.report(run.reporter, step.iteration)


class ObjectiveStats(Callback):
    """The objective's own statistics of the last step (mdm: mean t, masked fraction).

    Args:
        stats: ``step_stats(batches) -> {name: value}`` of the objective.
    """

    name = "objective_stats"

    def __init__(self, stats: Callable[[list[Batch]], dict[str, float]]):
        self.stats = stats

    def on_step_end(self, run: RunView, step: StepEnd) -> None:
        """On log steps: the step's statistics."""
        if step.log_due:
            run.reporter.on_train_stats(step.iteration, self.stats(step.batches))


class CoordCheck(Callback):
    """``--mup-coord-check``: activation l1s of the first iterations (``scaling/coord_check.py``).

    Args:
        run: The run (its model gets forward hooks).
    """

    name = "coord_check"

    def __init__(self, run: RunView):
        self.logger = CoordCheckLogger(run.engine.module)

    def on_step_end(self, run: RunView, step: StepEnd) -> None:
        """Every step until the check is done: that step's forward passes."""
        self.logger.on_step(step.iteration)


class CorpusMeter(Callback):
    """Training loss per corpus of a mixture (the engine adds to ``meter`` every micro-batch).

    Args:
        meter: The per-corpus sums the engine fills.
        corpora: Corpus name of each dataset id.
    """

    name = "corpus_meter"

    def __init__(self, meter: CorpusLoss, corpora: Sequence[str]):
        self.meter = meter
        self.corpora = corpora

    def on_step_end(self, run: RunView, step: StepEnd) -> None:
        """On log steps: each corpus's mean loss since the last report (collective)."""
        if step.log_due:
            run.reporter.on_corpus_losses("train", step.iteration, self.meter.collect(self.corpora))


class OptimizerStates(Callback):
    """``--log-optimizer-states-to-tensorboard``: norms of the optimizer's states
    (``optimizer_states.py``); the last ones also go into the run's result."""

    name = "optimizer_states"

    def __init__(self) -> None:
        self.latest: dict[str, float] | None = None

    def on_step_end(self, run: RunView, step: StepEnd) -> None:
        """On log steps: the statistics (collective: every rank calls it)."""
        if step.log_due:
            self.latest = optimizer_state_stats(run.engine)
            run.reporter.on_optimizer_states(step.iteration, self.latest)

    def on_run_end(self, run: RunView, state: TrainState, result: TrainResult) -> TrainResult:
        """The result carries the last statistics."""
        return replace_result(result, optimizer_states=self.latest)
