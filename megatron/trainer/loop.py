"""The training loop. ``Trainer.run`` reads like a table of contents; each step is a method.
Resume policy lives in ``resume.py``, the LR range test in ``range_test.py``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron.checkpointing.checkpoint import (
    checkpoint_tag,
    lock_save_dir,
    mark_pre_cooldown,
    prune_checkpoints,
    read_latest_tag,
    rng_state,
    save_checkpoint,
)
from megatron.checkpointing.layout import UNIVERSAL_CHECKPOINT_INFO, deepspeed_universal_info
from megatron.checkpointing.lifecycle import check_load_dir, finished_message, same_directory
from megatron.checkpointing.metadata import (
    client_info,
    run_metadata,
)
from megatron.checkpointing.reader import CLIENT_KEY
from megatron.checkpointing.universal import (
    load_weights,
)
from megatron.config.env import DistEnv
from megatron.config.fields import ConfigError
from megatron.continual.regularizers import attach_regularizers
from megatron.data.builder import DataStreams, Split, build_streams
from megatron.data.integrity import check_data_files
from megatron.data.loader import BatchReader
from megatron.distributed import ParallelContext, destroy_distributed, init_distributed
from megatron.logs import setup_logging
from megatron.model.compile import CompileWatch
from megatron.objectives.registry import eval_batches
from megatron.plan.deepspeed import deepspeed_agreements
from megatron.plan.run import RunPlan
from megatron.scaling.coord_check import CoordCheckLogger
from megatron.schedules.registry import cooldown_start
from megatron.trainer.corpus_loss import CorpusLoss
from megatron.trainer.engine import TrainEngine
from megatron.trainer.metrics import Reporter
from megatron.trainer.nonfinite import NonFiniteCounter
from megatron.trainer.optimizer_states import optimizer_state_stats
from megatron.trainer.resume import open_universal, restore
from megatron.trainer.state import TrainState, data_state
from megatron.trainer.step_values import StepValues
from megatron.trainer.stop import StopSignals, kill_switch_at_start
from megatron.trainer.token_counts import TokenCounter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What a finished (or stopped) run reports.

    Attributes:
        iteration: Completed steps.
        train_loss: Mean training loss of the last log interval.
        valid_loss: Last validation loss (None without a validation split).
        test_loss: Test loss at the end (None without a test split).
        losses: Per-step training losses of this process's run.
        stop_reason: Why the run stopped early, or None.
        lr_suggestion: ``--lr-finder`` runs: (steepest-descent LR, minimum LR / 10).
        optimizer_states: The last logged optimizer-state norms
            (``--log-optimizer-states-to-tensorboard``), else None.
    """

    iteration: int
    train_loss: float
    valid_loss: float | None
    test_loss: float | None
    losses: tuple[float, ...]
    stop_reason: str | None
    lr_suggestion: tuple[float, float] | None = None
    optimizer_states: dict[str, float] | None = None
    tokens: tuple[int, int] | None = None
    """(trainable, consumed) label tokens of this process's steps (metadata is not trainable)."""
    valid_history: tuple[tuple[int, float], ...] = ()
    """(iteration, validation loss) of this process's evaluations (``run_result.json``)."""


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
    """

    def __init__(self, plan: RunPlan, ctx: ParallelContext):
        self.plan = plan
        self.ctx = ctx
        self.cfg = plan.config
        check_load_dir(self.cfg.checkpoint)  # a typo'd --load must not train from random weights
        check_data_files(plan)  # corrupt, empty or foreign-tokenizer data: one line, before reading
        self.streams: DataStreams = build_streams(
            plan, is_builder=ctx.env.rank == 0, barrier=_barrier
        )
        self.universal = open_universal(plan)
        self.engine = TrainEngine(plan, ctx, before_initialize=self._universal_weights)
        self.objective = plan.objective
        self.regularizers = attach_regularizers(self)  # EWC/LwF, or None
        self.train_reader = self._reader(self.streams.train.stream)
        self.train_meter = _meter(self.streams.train, ctx)
        self.token_counter = TokenCounter(ctx.device, plan.tokens_per_step)
        self.cooldown_start = cooldown_start(plan.schedule_state)
        self.reporter = Reporter(plan, ctx)
        self.compile_watch = CompileWatch(self.cfg.train.compile, ctx.device)
        self.stop = StopSignals(self.cfg.train, ctx.device)
        self.nonfinite = NonFiniteCounter(self.cfg.train.max_nonfinite_steps)
        self.losses = StepValues()  # device tensors until a log line reads them
        self.valid_loss: float | None = None
        self.valid_history: list[tuple[int, float]] = []
        self.optimizer_states: dict[str, float] | None = None
        self.test_loss: float | None = None
        self.saved_iteration: int | None = None  # the iteration whose checkpoint exists
        self.coord_check = (  # --mup-coord-check: activation l1s of the first iterations
            CoordCheckLogger(self.engine.module) if self.cfg.scaling.mup_coord_check else None
        )

    def _universal_weights(self, module: torch.nn.Module) -> None:
        if self.universal is not None:
            load_weights(module, self.universal, self.plan.model, self.ctx.tp_rank, self.ctx.tp_size)

    def _reader(self, stream: object) -> BatchReader:
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
        stop_reason = None
        try:  # a refused checkpoint must also restore the SIGTERM handler (finally below)
            state = restore(self)
            if state.loaded_from is not None:
                done = finished_message(state.loaded_from, state.iteration, self.plan.train_iters)
                if done is not None:  # a requeued relaunch: the committed checkpoint stays as is
                    log.info(done)
                    return self._result(state, None)
                if same_directory(self.cfg.checkpoint.load, self.cfg.checkpoint.save):
                    self.saved_iteration = state.iteration  # that checkpoint is already in --save
            self._run_start_event(state)
            while state.iteration < self.plan.train_iters:
                self.train_step(state)
                if self._due(state.iteration, self.cfg.train.eval_interval):
                    self.evaluate(state, "valid")
                stop_reason = self.stop.check(state.iteration)
                if stop_reason or (
                    self.nonfinite.consecutive == 0  # no routine save inside a non-finite streak
                    and (self._due(state.iteration, self.cfg.checkpoint.save_interval)
                         or state.iteration == self.cooldown_start)
                ):
                    self.save(state)
                if stop_reason:
                    log.info("stopping at iteration %d: %s", state.iteration, stop_reason)
                    break
            if stop_reason is None:
                self.finish(state)
            self.reporter.events.write(
                "run_end", iteration=state.iteration, status="stopped" if stop_reason else "finished",
                stop_reason=stop_reason, valid_loss=self.valid_loss, test_loss=self.test_loss)
        finally:
            self.reporter.close()
            self.stop.close()
        return self._result(state, stop_reason)

    def _result(self, state: TrainState, stop_reason: str | None) -> TrainResult:
        return TrainResult(
            iteration=state.iteration,
            train_loss=self.reporter.last_train_loss,
            valid_loss=self.valid_loss,
            test_loss=self.test_loss,
            losses=tuple(self.losses),
            stop_reason=stop_reason,
            optimizer_states=self.optimizer_states,
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
            state = restore(self)
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

    def train_step(self, state: TrainState) -> None:
        """One optimizer step at the scheduled LR; report it."""
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
        if self.reporter.due(state.iteration):
            self.reporter.on_timers(state.iteration, self.engine.timers.collect())
            self.losses.flush()
            self.token_counter.report(self.reporter, state.iteration)
        if self.objective.step_stats is not None and self.reporter.due(state.iteration):
            self.reporter.on_train_stats(state.iteration, self.objective.step_stats(batches))
        if self.coord_check is not None:
            self.coord_check.on_step(state.iteration)
        if self.train_meter is not None and self.reporter.due(state.iteration):
            losses = self.train_meter.collect(self.streams.train.corpora)
            self.reporter.on_corpus_losses("train", state.iteration, losses)
        if self.cfg.logging.log_optimizer_states_to_tensorboard and self.reporter.due(state.iteration):
            self.optimizer_states = optimizer_state_stats(self.engine)
            self.reporter.on_optimizer_states(state.iteration, self.optimizer_states)

    def evaluate(self, state: TrainState, split: str) -> float | None:
        """Mean loss over ``--eval-iters`` global batches of ``split`` (the same ones each time),
        each seen in the objective's number of draws (``--num-mc`` for mdm)."""
        data = self.streams.valid if split == "valid" else self.streams.test
        if data is None or self.cfg.train.eval_iters == 0:
            return None
        started = time.perf_counter()
        reader = self._reader(data.stream)
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
        """Checkpoint (weights as the optimizer's eval mode defines them, e.g. schedule-free x)."""
        if self.cfg.checkpoint.save is None or self.saved_iteration == state.iteration:
            return
        started = time.perf_counter()
        ckpt = self.cfg.checkpoint
        self.engine.eval_mode()
        metadata = run_metadata(
            self.plan, state, self.engine.scheduler.state_dict(),
            data_state(self.streams.train.stream, state.consumed_samples),
        )
        client = {
            "rng": rng_state(),
            "iteration": state.iteration,  # DeepSpeed's ds_to_universal reads these two
            UNIVERSAL_CHECKPOINT_INFO: deepspeed_universal_info(self.plan.model),
            CLIENT_KEY: client_info(self.engine, self.ctx, metadata),
        }
        side_files = None if self.regularizers is None else self.regularizers.save
        save_checkpoint(self.engine.engine, ckpt.save, state.iteration, metadata, client, side_files)
        self.saved_iteration = state.iteration
        self.engine.train_mode()
        if state.iteration == self.cooldown_start:
            mark_pre_cooldown(ckpt.save, state.iteration)
        if ckpt.keep_last_n_checkpoints:
            prune_checkpoints(ckpt.save, ckpt.keep_last_n_checkpoints)
        seconds = time.perf_counter() - started
        self.reporter.events.write("save", iteration=state.iteration, directory=ckpt.save,
                                   tag=checkpoint_tag(state.iteration), seconds=round(seconds, 3))
        self.reporter.exclude(seconds)

    def finish(self, state: TrainState) -> None:
        """Final checkpoint, then final validation and test loss (a crash there loses nothing)."""
        self.save(state)
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
    lock = None
    try:
        lock = lock_save_dir(plan.config.checkpoint.save, ctx.device)  # one writer per --save
        if kill_switch_at_start(plan.config.train.kill_switch_file, ctx.device):
            return TrainResult(iteration=0, train_loss=float("nan"), valid_loss=None, test_loss=None,
                               losses=(), stop_reason=None)
        log_plan(plan)
        trainer = Trainer(plan, ctx)
        if plan.config.schedule.lr_finder:
            from megatron.trainer.range_test import range_test

            return range_test(trainer)
        return trainer.run()
    finally:
        if lock is not None:
            lock.release()
        destroy_distributed()
