"""Resume policy: what a run takes from ``--load`` (plain functions over a ``RunView``).

A normal checkpoint: metadata checks (shape, scaling recipe, topology, tokenizer), DeepSpeed
states, the schedule check, RNG and data position. A universal checkpoint: weights went in before
DeepSpeed (``open_universal`` + the engine's ``before_initialize``), optimizer states here.
``--finetune`` keeps the weights only; ``--reset-data-state`` keeps optimizer and schedule but
restarts the data stream. The LRs of the next steps are logged after every load.
"""

from __future__ import annotations

import logging
import os

from megatron.checkpointing.checkpoint import (
    load_engine_states,
    read_latest_tag,
    read_metadata,
    set_rng_state,
)
from megatron.checkpointing.metadata import (
    check_model_shape,
    check_tokenizer,
    check_topology,
    log_config_diff,
)
from megatron.checkpointing.universal import (
    LATEST_UNIVERSAL_FILE,
    UniversalCheckpoint,
    is_universal,
    load_optimizer_states,
    resolve_universal_dir,
)
from megatron.config.checkpoint import CheckpointConfig
from megatron.config.fields import ConfigError
from megatron.plan.run import RunPlan
from megatron.scaling.recipes import check_resume_scaling
from megatron.schedules.registry import schedule_from_state
from megatron.schedules.scheduler import LRScheduler
from megatron.trainer.callbacks import CLIENT_KEY as CALLBACKS_KEY
from megatron.trainer.callbacks import Callbacks, Restored
from megatron.trainer.protocols import RunView
from megatron.trainer.state import TrainState, restore_data_state

log = logging.getLogger(__name__)


def open_universal(plan: RunPlan) -> UniversalCheckpoint | None:
    """``--universal-checkpoint``: open and check it before the model is built."""
    ckpt = plan.config.checkpoint
    if not ckpt.universal_checkpoint:
        return None
    uc = UniversalCheckpoint(resolve_universal_dir(ckpt.load))
    check_model_shape(plan, uc.metadata, uc.directory)
    check_resume_scaling(plan.scaling, uc.metadata, uc.directory)
    check_tokenizer(plan, uc.metadata, uc.directory)
    return uc


def stage_start(ckpt: CheckpointConfig) -> bool:
    """A load that starts a stage (EWC/LwF anchor) rather than resuming inside one: ``--finetune``,
    or ``--load`` from another directory than ``--save`` (the previous stage's)."""
    if ckpt.finetune or ckpt.save is None:
        return True
    return os.path.realpath(ckpt.load) != os.path.realpath(ckpt.save)


def restore(trainer: RunView, callbacks: Callbacks) -> TrainState:
    """Resume from ``--load`` (or start fresh when it holds no checkpoint yet); the callbacks'
    ``on_restore`` and ``load_state_dict`` see what was loaded."""
    cfg = trainer.plan.config
    ckpt = cfg.checkpoint
    if ckpt.load is None:
        return TrainState()
    if trainer.universal is not None:
        metadata, client, where = _restore_universal(trainer)
    else:
        tag = read_latest_tag(ckpt.load)
        if tag is None:
            if is_universal(ckpt.load) or os.path.isfile(os.path.join(ckpt.load, LATEST_UNIVERSAL_FILE)):
                raise ConfigError(f"--load: {ckpt.load} holds a universal checkpoint; add --universal-checkpoint")
            callbacks.on_restore(trainer, Restored(None, {}, stage_start(ckpt)))
            log.info("--load %s holds no checkpoint yet: starting from scratch", ckpt.load)
            return TrainState()
        where = f"{ckpt.load}/{tag}"
        metadata = read_metadata(ckpt.load, tag)
        check_model_shape(trainer.plan, metadata, where)
        check_resume_scaling(trainer.plan.scaling, metadata, where)
        check_topology(trainer.plan, metadata, where)
        check_tokenizer(trainer.plan, metadata, where)
        log_config_diff(trainer.plan, metadata)
        client = load_engine_states(
            trainer.engine.engine,
            ckpt.load,
            tag,
            weights_only=ckpt.finetune or cfg.train.skip_train,
            load_optimizer=not ckpt.no_load_optim,
        )
    # The optimizer's saved param groups carry the old run's base LRs: the schedule decides.
    scheduler = trainer.engine.scheduler
    scheduler.replace(scheduler.fn, scheduler.fingerprint, scheduler.lr, scheduler.schedule)
    if cfg.train.skip_train:  # weights only; the schedule and data position are unused
        log.info("--skip-train: evaluating the weights of %s (iteration %s)", where, metadata.get("iteration"))
        return TrainState(iteration=int(metadata.get("iteration") or 0))
    iteration = 0 if ckpt.finetune else int(metadata["iteration"])
    callbacks.load_state_dict({} if ckpt.finetune else client.get(CALLBACKS_KEY) or {})
    callbacks.on_restore(trainer, Restored(where, metadata, stage_start(ckpt), iteration))
    if ckpt.finetune:
        log.info(
            "--finetune: loaded weights of %s; iteration, optimizer, LR schedule and data "
            "position start from zero",
            where,
        )
        log_next_lrs(trainer.engine.scheduler, 0)
        return TrainState()
    check_schedule(trainer.engine.scheduler, ckpt, metadata)
    if not ckpt.no_load_rng and "rng" in client:
        set_rng_state(client["rng"])
    state = TrainState(
        iteration=int(metadata["iteration"]), consumed_samples=int(metadata["consumed_samples"]),
        loaded_from=where,
    )
    if ckpt.reset_data_state:
        # A continual stage on a new list: optimizer and schedule go on, the stream restarts.
        log.info("--reset-data-state: data position reset (checkpoint had consumed %d samples)",
                 state.consumed_samples)
        state.consumed_samples = 0
    else:
        restore_data_state(trainer.streams.train.stream, state.consumed_samples, metadata)
    log.info("resumed at iteration %d", state.iteration)
    log_next_lrs(trainer.engine.scheduler, state.iteration)
    return state

def _restore_universal(trainer: RunView) -> tuple[dict, dict, str]:
    """Optimizer states of a universal checkpoint (its weights went in before DeepSpeed)."""
    uc, cfg = trainer.universal, trainer.plan.config
    ckpt = cfg.checkpoint
    log_config_diff(trainer.plan, uc.metadata)
    source = uc.metadata.get("universal", {})
    log.info("universal checkpoint %s (saved at TP=%s PP=%s DP=%s ZeRO-%s) loaded at TP=%d PP=%d DP=%d "
             "ZeRO-%d; RNG states start from the seed (the rank layout changed)", uc.directory,
             source.get("tp"), source.get("pp"), source.get("dp"), source.get("zero_stage"),
             trainer.plan.tp, trainer.plan.pp, trainer.plan.dp, cfg.parallel.zero_stage)
    if not (ckpt.finetune or ckpt.no_load_optim or cfg.train.skip_train):
        trainer.engine.eval_mode()  # the saved weights are the eval-mode ones (schedule-free x)
        load_optimizer_states(trainer.engine, uc, trainer.engine.optimizer_spec.group_state_keys)
        trainer.engine.train_mode()
    return uc.metadata, {}, uc.directory

def log_next_lrs(scheduler: LRScheduler, iteration: int) -> None:
    """After any load: the LRs of the next steps, so a reset or kept schedule is visible."""
    lrs = [f"{scheduler.fn(s) * scheduler.lr:.3e}" for s in range(iteration, iteration + 3)]
    log.info("LR of steps %d-%d: %s (%s)", iteration, iteration + 2, ", ".join(lrs), scheduler.fingerprint)

def check_schedule(scheduler: LRScheduler, ckpt: CheckpointConfig, metadata: dict) -> None:
    """Resume on the checkpoint's schedule; a different one needs an explicit choice."""
    saved = metadata.get("scheduler", {})
    if saved.get("schedule_fingerprint") in (None, scheduler.fingerprint):
        return
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
