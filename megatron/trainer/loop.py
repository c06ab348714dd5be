"""The training loop. ``Trainer.run`` reads like a table of contents; each step is a method."""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron.checkpointing.checkpoint import (
    checkpoint_tag,
    load_engine_states,
    mark_pre_cooldown,
    prune_checkpoints,
    read_latest_tag,
    read_metadata,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from megatron.checkpointing.layout import UNIVERSAL_CHECKPOINT_INFO, deepspeed_universal_info
from megatron.checkpointing.metadata import (
    check_model_shape,
    check_tokenizer,
    check_topology,
    client_info,
    log_config_diff,
    run_metadata,
)
from megatron.checkpointing.reader import CLIENT_KEY
from megatron.checkpointing.universal import (
    LATEST_UNIVERSAL_FILE,
    UniversalCheckpoint,
    is_universal,
    load_optimizer_states,
    load_weights,
    resolve_universal_dir,
)
from megatron.config.deepspeed import deepspeed_agreements
from megatron.config.env import DistEnv
from megatron.config.fields import ConfigError
from megatron.config.plan import RunPlan
from megatron.continual.regularizers import attach_regularizers, stage_start
from megatron.data.builder import DataStreams, Split, build_streams
from megatron.data.loader import BatchReader
from megatron.distributed import ParallelContext, destroy_distributed, init_distributed
from megatron.logs import setup_logging
from megatron.objectives.registry import eval_batches, plan_objective
from megatron.scaling.coord_check import CoordCheckLogger
from megatron.scaling.recipes import check_resume_scaling
from megatron.schedules.lr_finder import LRFinderRecorder
from megatron.schedules.registry import cooldown_start, schedule_from_state
from megatron.trainer.corpus_loss import CorpusLoss
from megatron.trainer.engine import TrainEngine
from megatron.trainer.metrics import Reporter
from megatron.trainer.optimizer_states import optimizer_state_stats
from megatron.trainer.state import TrainState, data_state, restore_data_state
from megatron.trainer.stop import StopSignals
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
        self.streams: DataStreams = build_streams(
            plan, is_builder=ctx.env.rank == 0, barrier=_barrier
        )
        self.universal = self._open_universal()
        self.engine = TrainEngine(plan, ctx, before_initialize=self._universal_weights)
        self.objective = plan_objective(plan)
        self.regularizers = attach_regularizers(self)  # EWC/LwF, or None
        self.train_reader = self._reader(self.streams.train.stream)
        self.train_meter = _meter(self.streams.train, ctx)
        self.token_counter = TokenCounter(ctx.device, plan.tokens_per_step)
        self.cooldown_start = cooldown_start(plan)
        self.reporter = Reporter(plan, ctx)
        self.stop = StopSignals(self.cfg.train, ctx.device)
        self.losses: list[float] = []
        self.valid_loss: float | None = None
        self.optimizer_states: dict[str, float] | None = None
        self.test_loss: float | None = None
        self.coord_check = (  # --mup-coord-check: activation l1s of the first iterations
            CoordCheckLogger(self.engine.module) if self.cfg.scaling.mup_coord_check else None
        )

    def _open_universal(self) -> UniversalCheckpoint | None:
        """``--universal-checkpoint``: open and check it before the model is built."""
        ckpt = self.cfg.checkpoint
        if not ckpt.universal_checkpoint:
            return None
        uc = UniversalCheckpoint(resolve_universal_dir(ckpt.load))
        check_model_shape(self.plan, uc.metadata, uc.directory)
        check_resume_scaling(self.plan.scaling, uc.metadata, uc.directory)
        check_tokenizer(self.plan, uc.metadata, uc.directory)
        return uc

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
        stop_reason = None
        try:  # a refused checkpoint must also restore the SIGTERM handler (finally below)
            state = self.restore()
            while state.iteration < self.plan.train_iters:
                self.train_step(state)
                if self._due(state.iteration, self.cfg.train.eval_interval):
                    self.evaluate(state, "valid")
                stop_reason = self.stop.check(state.iteration)
                if (
                    stop_reason
                    or self._due(state.iteration, self.cfg.checkpoint.save_interval)
                    or state.iteration == self.cooldown_start
                ):
                    self.save(state)
                if stop_reason:
                    log.info("stopping at iteration %d: %s", state.iteration, stop_reason)
                    break
            if stop_reason is None:
                self.finish(state)
        finally:
            self.reporter.close()
            self.stop.close()
        return TrainResult(
            iteration=state.iteration,
            train_loss=self.reporter.last_train_loss,
            valid_loss=self.valid_loss,
            test_loss=self.test_loss,
            losses=tuple(self.losses),
            stop_reason=stop_reason,
            optimizer_states=self.optimizer_states,
            tokens=(self.token_counter.trainable_total, self.token_counter.consumed_total),
        )

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
        result = self.engine.train_step(batches, self.train_meter, iteration=state.iteration)
        state.iteration += 1
        state.consumed_samples += self.plan.global_batch_size
        self.losses.append(result.loss)
        self.reporter.on_step(state.iteration, result.loss, lr, result.grad_norm, result.skipped)
        if self.reporter.due(state.iteration):
            self.reporter.on_timers(state.iteration, self.engine.timers.collect())
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
        return loss

    def save(self, state: TrainState) -> None:
        """Checkpoint (weights as the optimizer's eval mode defines them, e.g. schedule-free x)."""
        if self.cfg.checkpoint.save is None:
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
        if self.regularizers is not None:  # before the checkpoint's files: `latest` moves last
            self.regularizers.save(os.path.join(ckpt.save, checkpoint_tag(state.iteration)))
        save_checkpoint(self.engine.engine, ckpt.save, state.iteration, metadata, client)
        self.engine.train_mode()
        if state.iteration == self.cooldown_start:
            mark_pre_cooldown(ckpt.save, state.iteration)
        if ckpt.keep_last_n_checkpoints:
            prune_checkpoints(ckpt.save, ckpt.keep_last_n_checkpoints)
        self.reporter.exclude(time.perf_counter() - started)

    def finish(self, state: TrainState) -> None:
        """Final validation and test loss, final checkpoint."""
        self.evaluate(state, "valid")
        self.test_loss = self.evaluate(state, "test")
        self.save(state)

    def restore(self) -> TrainState:
        """Resume from ``--load`` (or start fresh when it holds no checkpoint yet)."""
        ckpt = self.cfg.checkpoint
        if ckpt.load is None:
            return TrainState()
        if self.universal is not None:
            metadata, client, where = self._restore_universal()
        else:
            tag = read_latest_tag(ckpt.load)
            if tag is None:
                if is_universal(ckpt.load) or os.path.isfile(os.path.join(ckpt.load, LATEST_UNIVERSAL_FILE)):
                    raise ConfigError(f"--load: {ckpt.load} holds a universal checkpoint; add --universal-checkpoint")
                if self.regularizers is not None:
                    self.regularizers.no_checkpoint(ckpt.load)
                log.info("--load %s holds no checkpoint yet: starting from scratch", ckpt.load)
                return TrainState()
            where = f"{ckpt.load}/{tag}"
            metadata = read_metadata(ckpt.load, tag)
            check_model_shape(self.plan, metadata, where)
            check_resume_scaling(self.plan.scaling, metadata, where)
            check_topology(self.plan, metadata, where)
            check_tokenizer(self.plan, metadata, where)
            log_config_diff(self.plan, metadata)
            client = load_engine_states(
                self.engine.engine,
                ckpt.load,
                tag,
                weights_only=ckpt.finetune,
                load_optimizer=not ckpt.no_load_optim,
            )
        # The optimizer's saved param groups carry the old run's base LRs: the schedule decides.
        scheduler = self.engine.scheduler
        scheduler.replace(scheduler.fn, scheduler.fingerprint, scheduler.lr, scheduler.schedule)
        if self.regularizers is not None:
            self.regularizers.on_restore(where, metadata, stage_start(ckpt))
        if ckpt.finetune:
            log.info(
                "--finetune: loaded weights of %s; iteration, optimizer, LR schedule and data "
                "position start from zero",
                where,
            )
            self._log_next_lrs(0)
            return TrainState()
        self._check_schedule(metadata)
        if not ckpt.no_load_rng and "rng" in client:
            set_rng_state(client["rng"])
        state = TrainState(
            iteration=int(metadata["iteration"]), consumed_samples=int(metadata["consumed_samples"])
        )
        if ckpt.reset_data_state:
            # A continual stage on a new list: optimizer and schedule go on, the stream restarts.
            log.info("--reset-data-state: data position reset (checkpoint had consumed %d samples)",
                     state.consumed_samples)
            state.consumed_samples = 0
        else:
            restore_data_state(self.streams.train.stream, state.consumed_samples, metadata)
        log.info("resumed at iteration %d", state.iteration)
        self._log_next_lrs(state.iteration)
        return state

    def _restore_universal(self) -> tuple[dict, dict, str]:
        """Optimizer states of a universal checkpoint (its weights went in before DeepSpeed)."""
        uc, ckpt = self.universal, self.cfg.checkpoint
        log_config_diff(self.plan, uc.metadata)
        source = uc.metadata.get("universal", {})
        log.info("universal checkpoint %s (saved at TP=%s PP=%s DP=%s ZeRO-%s) loaded at TP=%d PP=%d DP=%d "
                 "ZeRO-%d; RNG states start from the seed (the rank layout changed)", uc.directory,
                 source.get("tp"), source.get("pp"), source.get("dp"), source.get("zero_stage"),
                 self.plan.tp, self.plan.pp, self.plan.dp, self.cfg.parallel.zero_stage)
        if not (ckpt.finetune or ckpt.no_load_optim):
            self.engine.eval_mode()  # the saved weights are the eval-mode ones (schedule-free x)
            load_optimizer_states(self.engine, uc, self.engine.optimizer_spec.group_state_keys)
            self.engine.train_mode()
        return uc.metadata, {}, uc.directory

    def _log_next_lrs(self, iteration: int) -> None:
        """After any load: the LRs of the next steps, so a reset or kept schedule is visible."""
        scheduler = self.engine.scheduler
        lrs = [f"{scheduler.fn(s) * scheduler.lr:.3e}" for s in range(iteration, iteration + 3)]
        log.info("LR of steps %d-%d: %s (%s)", iteration, iteration + 2, ", ".join(lrs), scheduler.fingerprint)

    def _check_schedule(self, metadata: dict) -> None:
        """Resume on the checkpoint's schedule; a different one needs an explicit choice."""
        saved = metadata.get("scheduler", {})
        scheduler = self.engine.scheduler
        if saved.get("schedule_fingerprint") in (None, scheduler.fingerprint):
            return
        ckpt = self.cfg.checkpoint
        if ckpt.override_opt_param_scheduler:
            log.warning("--override-opt-param-scheduler: following this run's LR schedule %s "
                        "instead of the checkpoint's %s", scheduler.fingerprint, saved["schedule_fingerprint"])
        elif ckpt.use_checkpoint_opt_param_scheduler and saved.get("schedule"):
            fn, fingerprint = schedule_from_state(saved["schedule"])
            scheduler.replace(fn, fingerprint, saved["schedule"]["lr"], saved["schedule"])
            log.info("--use-checkpoint-opt-param-scheduler: following the checkpoint's LR schedule %s",
                     fingerprint)
        else:
            raise ConfigError(
                f"--lr-decay-style: the LR schedule differs from the checkpoint's (checkpoint: "
                f"{saved['schedule_fingerprint']}; now: {scheduler.fingerprint}); resuming would "
                "silently change the LR. Add --use-checkpoint-opt-param-scheduler (keep the "
                "checkpoint's) or --override-opt-param-scheduler (use this one), or start a new "
                "schedule with --finetune"
            )


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _meter(split: Split, ctx: ParallelContext) -> CorpusLoss | None:
    """A per-corpus loss meter for splits that mix more than one corpus."""
    if len(set(split.corpora)) < 2:
        return None
    return CorpusLoss(len(split.corpora), ctx.device)


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


def train(plan: RunPlan, env: DistEnv) -> TrainResult:
    """Start the process groups, run, and tear them down (also on error)."""
    ctx = init_distributed(plan, env)
    setup_logging(ctx.is_logging_rank)
    try:
        log_plan(plan)
        trainer = Trainer(plan, ctx)
        return range_test(trainer) if plan.config.schedule.lr_finder else trainer.run()
    finally:
        destroy_distributed()
