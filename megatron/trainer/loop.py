"""The training loop. ``Trainer.run`` reads like a table of contents; each step is a method.

Everything that is not the step plugs in as a ``Callback`` (``callbacks.py``; the list is built
in ``Trainer._callbacks``): EWC/LwF, reporting, diagnostics, the LR range test. Resume policy
lives in ``resume.py``."""

from __future__ import annotations

import json
import logging
import sys
import time

import torch
import torch.distributed as dist

from megatron.checkpointing.async_save import finish_async_save
from megatron.checkpointing.checkpoint import read_latest_tag
from megatron.checkpointing.universal import load_weights
from megatron.config.env import DistEnv
from megatron.config.fields import ConfigError
from megatron.continual.regularizers import Regularizers, regularizer_callback
from megatron.data.builder import DataStreams, Split, build_streams
from megatron.data.integrity import check_data_files
from megatron.data.loader import BatchReader
from megatron.distributed import ParallelContext, destroy_distributed, init_distributed
from megatron.logs import setup_logging
from megatron.model.compile import CompileWatch
from megatron.objectives.registry import eval_batches
from megatron.plan.deepspeed import deepspeed_agreements
from megatron.plan.run import RunPlan
from megatron.trainer.callbacks import Callbacks, StepEnd
from megatron.trainer.checkpoints import CheckpointManager
from megatron.trainer.corpus_loss import CorpusLoss
from megatron.trainer.engine import TrainEngine
from megatron.trainer.metrics import Reporter
from megatron.trainer.nonfinite import NonFiniteCounter
from megatron.trainer.range_test import LRFinder
from megatron.trainer.state import TrainResult, TrainState
from megatron.trainer.step_callbacks import CoordCheck, CorpusMeter, IntervalReport, ObjectiveStats, OptimizerStates
from megatron.trainer.step_values import StepValues
from megatron.trainer.stop import StopSignals, kill_switch_at_start
from megatron.trainer.token_counts import TokenCounter

log = logging.getLogger(__name__)


def log_plan(plan: RunPlan) -> None:
    """Print the derived values and the DeepSpeed config once, at start."""
    log.info("run plan: %s", json.dumps(plan.summary()))
    for flag, row in plan.sources.items():
        log.info("config %s = %r  (from %s)", flag, row["value"], row["source"])
    log.info("deepspeed config: %s", json.dumps(plan.deepspeed))
    for line in deepspeed_agreements(plan):
        log.info(line)


class Trainer:
    """One run: data, engine, state, reporting, stop signals.

    Args:
        plan: The resolved run.
        ctx: This rank's parallel placement (process groups already started).
        checkpoints: The run's checkpoint owner (``train`` passes the one holding the ``--save``
            lock; default: a new one).
    """

    def __init__(self, plan: RunPlan, ctx: ParallelContext, checkpoints: CheckpointManager | None = None):
        self.plan = plan
        self.ctx = ctx
        self.cfg = plan.config
        self.checkpoints = checkpoints or CheckpointManager(plan, ctx)
        self.checkpoints.check_load_dir()  # a typo'd --load must not train from random weights
        check_data_files(plan)  # corrupt, empty or foreign-tokenizer data: one line, before reading
        self.streams: DataStreams = build_streams(
            plan, is_builder=ctx.env.rank == 0, barrier=_barrier
        )
        self.universal = self.checkpoints.open_universal()
        self.engine = TrainEngine(plan, ctx, before_initialize=self._universal_weights)
        self.objective = plan.objective
        self.train_reader = self.reader(self.streams.train.stream)
        self.train_meter = _meter(self.streams.train, ctx)
        self.token_counter = TokenCounter(ctx.device, plan.tokens_per_step)
        self.reporter = Reporter(plan, ctx)
        self.compile_watch = CompileWatch(self.cfg.train.compile, ctx.device)
        self.stop = StopSignals(self.cfg.train, ctx.device)
        self.nonfinite = NonFiniteCounter(self.cfg.train.max_nonfinite_steps)
        self.losses = StepValues()  # device tensors until a log line reads them
        self.valid_loss: float | None = None
        self.valid_history: list[tuple[int, float]] = []
        self.test_loss: float | None = None
        self.callbacks = self._callbacks()
        self.engine.callbacks = self.callbacks  # their extra loss terms

    def _callbacks(self) -> Callbacks:
        """Everything besides the step, in the order its hooks run (None: a feature that is off)."""
        cfg = self.cfg
        return Callbacks([
            regularizer_callback(self),  # EWC/LwF: loss terms, anchor side files, restore
            IntervalReport(self.engine.timers, self.token_counter),
            None if self.objective.step_stats is None else ObjectiveStats(self.objective.step_stats),
            CoordCheck(self) if cfg.scaling.mup_coord_check else None,
            None if self.train_meter is None else CorpusMeter(self.train_meter, self.streams.train.corpora),
            OptimizerStates() if cfg.logging.log_optimizer_states_to_tensorboard else None,
            LRFinder() if cfg.schedule.lr_finder else None,  # a probe run: no load, eval or save
        ])

    @property
    def regularizers(self) -> Regularizers | None:
        """The EWC/LwF callback, or None."""
        return self.callbacks.get(Regularizers)  # type: ignore[return-value]

    def _universal_weights(self, module: torch.nn.Module) -> None:
        if self.universal is not None:
            load_weights(module, self.universal, self.plan.model, self.ctx.tp_rank, self.ctx.tp_size)

    def reader(self, stream: object) -> BatchReader:
        """A batch reader over ``stream`` with the run's batch geometry."""
        return BatchReader(
            stream,
            micro_batch_size=self.plan.micro_batch_size,
            dp_size=self.plan.dp,
            dp_rank=self.ctx.dp_rank,
            grad_accum_steps=self.plan.grad_accum_steps,
            device=self.ctx.device,
        )

    def run(self) -> TrainResult:
        """Train until the plan's last iteration or a stop signal; evaluate and save."""
        if self.cfg.train.skip_train:
            return self.evaluate_only()
        probe = self.callbacks.probe  # the LR range test: nothing loaded, evaluated or saved
        try:  # a refused checkpoint must also restore the SIGTERM handler (finally below)
            state = TrainState() if probe else self.checkpoints.restore(self, self.callbacks)
            done = self.checkpoints.finished(state)
            if done is not None:  # a requeued relaunch: the committed checkpoint stays as is
                log.info(done)
                return self._result(state, None)
            self._run_start_event(state)
            self.callbacks.on_run_start(self, state)
            stop_reason = self._loop(state, probe)
            if stop_reason is None and not probe:
                self.finish(state)
            self.reporter.events.write(
                "run_end", iteration=state.iteration, status="stopped" if stop_reason else "finished",
                stop_reason=stop_reason, valid_loss=self.valid_loss, test_loss=self.test_loss)
            return self.callbacks.on_run_end(self, state, self._result(state, stop_reason))
        finally:
            try:  # --async-save: the save in flight is committed (or abandoned on an error)
                finish_async_save(self.engine.engine, abandon=sys.exc_info()[0] is not None)
            finally:
                self.reporter.close()
                self.stop.close()

    def _loop(self, state: TrainState, probe: bool) -> str | None:
        """Steps, evaluations and saves until the last iteration; the stop reason, or None."""
        while state.iteration < self.plan.train_iters:
            stop_reason = self.train_step(state)
            if not probe and self._due(state.iteration, self.cfg.train.eval_interval):
                self.evaluate(state, "valid")
            stop_reason = stop_reason or self.stop.check(state.iteration)
            if not probe and self.checkpoints.due(state.iteration, stopping=stop_reason is not None,
                                                  nonfinite_streak=self.nonfinite.consecutive > 0):
                self.save(state)
            if stop_reason:
                log.info("stopping at iteration %d: %s", state.iteration, stop_reason)
                return stop_reason
        return None

    def _result(self, state: TrainState, stop_reason: str | None) -> TrainResult:
        return TrainResult(
            iteration=state.iteration,
            train_loss=self.reporter.last_train_loss,
            valid_loss=self.valid_loss,
            test_loss=self.test_loss,
            losses=tuple(self.losses),
            stop_reason=stop_reason,
            tokens=(self.token_counter.trainable_total, self.token_counter.consumed_total),
            valid_history=tuple(self.valid_history),
        )

    def _run_start_event(self, state: TrainState) -> None:
        """The event stream's first line of this launch: where it starts and its first LRs."""
        scheduler = self.engine.scheduler
        self.reporter.events.write(
            "run_start", iteration=state.iteration, train_iters=self.plan.train_iters,
            consumed_samples=state.consumed_samples,
            first_lrs=[scheduler.fn(s) * scheduler.lr for s in range(state.iteration, state.iteration + 3)],
            schedule_fingerprint=scheduler.fingerprint, plan=self.plan.summary(),
            world_size=self.plan.world_size)

    def evaluate_only(self) -> TrainResult:
        """``--skip-train``: the loaded weights' validation and test loss; nothing is saved."""
        try:
            load = self.cfg.checkpoint.load
            if self.universal is None and (load is None or read_latest_tag(load) is None):
                raise ConfigError(f"--skip-train: --load {load} holds no checkpoint to evaluate "
                                  "(random weights are not a result); give a trained run's directory (LOAD=DIR)")
            state = self.checkpoints.restore(self, self.callbacks)
            if self.streams.valid is None and self.streams.test is None:
                raise ConfigError("--skip-train: the data lists give no validation or test data; "
                                  "set --split (e.g. 98,1,1) or the validation/test data lists")
            self.evaluate(state, "valid")
            self.test_loss = self.evaluate(state, "test")
        finally:
            self.reporter.close()
            self.stop.close()
        return TrainResult(iteration=state.iteration, train_loss=float("nan"), valid_loss=self.valid_loss,
                           test_loss=self.test_loss, losses=(), stop_reason=None)

    def _due(self, iteration: int, interval: int | None) -> bool:
        return bool(interval) and iteration % interval == 0 and iteration < self.plan.train_iters

    def train_step(self, state: TrainState) -> str | None:
        """One optimizer step at the scheduled LR; report it. Returns a callback's stop reason."""
        self.engine.scheduler.set_step(state.iteration)
        lr = self.engine.scheduler.current_lr()
        with self.engine.timers.phase("data"):
            batches = self.objective.batches(
                self.plan, self.train_reader, state.consumed_samples,
                iteration=state.iteration, split="train", draw=0,
            )
        self.token_counter.add(batches)
        with self.compile_watch.step(self.reporter, state.iteration):  # --compile: time apart
            result = self.engine.train_step(batches, self.train_meter, iteration=state.iteration)
        state.iteration += 1
        state.consumed_samples += self.plan.global_batch_size
        self.losses.append(result.loss)
        self.reporter.on_step(state.iteration, result.loss, lr, result.grad_norm, result.skipped)
        self.nonfinite.update(result.nonfinite, state.iteration)  # raises after N in a row
        step = StepEnd(state.iteration, lr, result.loss, batches, self.reporter.due(state.iteration))
        return self.callbacks.on_step_end(self, step)

    def evaluate(self, state: TrainState, split: str) -> float | None:
        """Mean loss over ``--eval-iters`` global batches of ``split`` (the same ones each time),
        each seen in the objective's number of draws (``--num-mc`` for mdm)."""
        data = self.streams.valid if split == "valid" else self.streams.test
        if data is None or self.cfg.train.eval_iters == 0:
            return None
        started = time.perf_counter()
        reader = self.reader(data.stream)
        meter = _meter(data, self.ctx)
        self.engine.eval_mode()
        losses = [
            self.engine.eval_loss(batches, meter)
            for batches in eval_batches(self.objective, self.plan, reader, split=split, iteration=state.iteration)
        ]
        self.engine.train_mode()
        loss = sum(losses) / len(losses)
        self.reporter.on_eval(split, state.iteration, loss)
        if meter is not None:
            self.reporter.on_corpus_losses(split, state.iteration, meter.collect(data.corpora))
        self.reporter.exclude(time.perf_counter() - started)
        if split == "valid":
            self.valid_loss = loss
            self.valid_history.append((state.iteration, loss))
        return loss

    def save(self, state: TrainState) -> None:
        """Checkpoint now (``CheckpointManager.save``: contents, side files, retention)."""
        self.checkpoints.save(self, self.callbacks, state)

    def finish(self, state: TrainState) -> None:
        """Final checkpoint, then final validation and test loss (a crash there loses nothing)."""
        self.save(state)
        finish_async_save(self.engine.engine, abandon=False)  # committed before the evaluation
        self.evaluate(state, "valid")
        self.test_loss = self.evaluate(state, "test")



def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _meter(split: Split, ctx: ParallelContext) -> CorpusLoss | None:
    """A per-corpus loss meter for splits that mix more than one corpus."""
    if len(set(split.corpora)) < 2:
        return None
    return CorpusLoss(len(split.corpora), ctx.device)


def train(plan: RunPlan, env: DistEnv) -> TrainResult:
    """Start the process groups, run, and tear them down (also on error)."""
    ctx = init_distributed(plan, env)
    setup_logging(ctx.is_logging_rank)
    checkpoints = CheckpointManager(plan, ctx)
    try:
        checkpoints.acquire()  # one writer per --save
        if kill_switch_at_start(plan.config.train.kill_switch_file, ctx.device):
            return TrainResult(iteration=0, train_loss=float("nan"), valid_loss=None, test_loss=None,
                               losses=(), stop_reason=None)
        log_plan(plan)
        return Trainer(plan, ctx, checkpoints).run()
    finally:
        checkpoints.release()
        destroy_distributed()
