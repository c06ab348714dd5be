"""Run names and the ``auto`` output paths derived from them (ALCF style)."""

from __future__ import annotations

import dataclasses
import os

from megatron.plan.run import RunPlan

AUTO = "auto"


def run_name(plan: RunPlan) -> str:
    """The run's name in the ALCF style: ``ws16_ds_stage1_nl32_hs4096_mb1_seq4096_gb3072_sp0_pp1_tp1_bf16_optadamw_lr0.0003``."""
    c = plan.config
    return (
        f"ws{plan.world_size}_ds_stage{c.parallel.zero_stage}_nl{c.model.num_layers}"
        f"_hs{c.model.hidden_size}_mb{plan.micro_batch_size}_seq{plan.seq_length}"
        f"_gb{plan.global_batch_size}_sp{int(c.parallel.sequence_parallel)}_pp{plan.pp}_tp{plan.tp}"
        f"_{plan.dtype}_opt{c.optim.optimizer}_lr{c.optim.lr:g}"
        + ("" if c.objective.objective == "ar" else f"_{c.objective.objective}")
    )


EVENTS_FILE = "events.jsonl"  # megatron.trainer.events reads and writes it


def resolve_auto_paths(plan: RunPlan) -> RunPlan:
    """``--save auto`` -> ``checkpoints/<run name>``, ``--load auto`` -> the (resolved) ``--save``
    (a relaunch resumes the run), ``--tensorboard-dir auto`` ->
    ``outputs/<run name>/tensorboard``, ``--event-log auto`` -> ``<save>/events.jsonl`` (None
    without a save directory; with ``--skip-train`` beside TensorBoard's files; ``none`` -> None)."""
    ckpt, logs = plan.config.checkpoint, plan.config.logging
    name = run_name(plan) if AUTO in (ckpt.save, logs.tensorboard_dir) else None
    save = os.path.join("checkpoints", name) if ckpt.save == AUTO else ckpt.save
    load = save if ckpt.load == AUTO else ckpt.load  # auto: resume from the run's own --save
    tensorboard_dir = (os.path.join("outputs", name, "tensorboard") if logs.tensorboard_dir == AUTO
                       else logs.tensorboard_dir)
    if logs.event_log == AUTO:
        # --skip-train writes nothing into a checkpoint directory: its events go beside TensorBoard's.
        where = tensorboard_dir if plan.config.train.skip_train else save
        event_log = None if where is None else os.path.join(where, EVENTS_FILE)
    else:
        event_log = None if logs.event_log in (None, "none") else logs.event_log
    config = dataclasses.replace(
        plan.config,
        checkpoint=dataclasses.replace(ckpt, save=save, load=load),
        logging=dataclasses.replace(
            logs,
            tensorboard_dir=tensorboard_dir,
            event_log=event_log,
        ),
    )
    return dataclasses.replace(plan, config=config)
