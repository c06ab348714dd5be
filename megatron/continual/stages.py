"""From a plan to the stages' definitions: trainer flags, replay weights, blended data lists.

Everything here is a pure function of the plan (and the sizes of its data files), so a stage's
definition can be hashed into its marker and recomputed on every restart. Torch-free.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from megatron.continual.meta_schedules import StageContext, get_meta_schedule
from megatron.continual.plan import Method, Plan, PlanError, Stage
from megatron.continual.replay import blended_list, list_tokens, replay_weights

WARMUP_USAGES = ("all", "first", "none")
AR_MODES = ("closed_form", "anchor")
# Fields a continuing schedule needs to be the same in every stage (one schedule, one fingerprint).
SCHEDULE_FIELDS = ("lr", "min_lr", "warmup_iters", "warmup_usage", "schedule", "constant_lr",
                   "lr_cooldown_fraction", "cooldown_fraction", "optimizer", "carry_optimizer")
# Trainer flags the runner owns; a plan's args must not set them.
RUNNER_FLAGS = ("load", "save", "finetune", "reset_data_state", "universal_checkpoint",
                "data_file_list", "valid_data_file_list", "train_iters", "train_tokens",
                "train_samples", "kill_switch_file", "event_log")


@dataclass(frozen=True, kw_only=True, slots=True)
class StageSpec:
    """One stage, resolved.

    Attributes:
        index: Position in the plan.
        stage: The plan's stage.
        directory: ``<root>/<key>``: checkpoints, data list, log, marker.
        flags: Trainer flags (config field -> value) of a fresh start, without the load flags.
        continues: The stage continues the previous stage's optimizer and schedule.
        sources: ``(key, data list)`` of the replay sources 0..t.
        weights: Replay weights of the sources.
        data_list: The blended list's text (written to ``data_list.txt``).
        eval_list: The held-out list's text with absolute paths (``eval_list.txt``), or None.
    """

    index: int
    stage: Stage
    directory: str
    flags: dict[str, Any]
    continues: bool
    sources: tuple[tuple[str, str], ...]
    weights: tuple[float, ...]
    data_list: str
    eval_list: str | None

    @property
    def key(self) -> str:
        """The stage's key."""
        return self.stage.key

    @property
    def data_list_path(self) -> str:
        """The blended list the stage trains on."""
        return os.path.join(self.directory, "data_list.txt")

    @property
    def eval_list_path(self) -> str:
        """The held-out list the stage validates on."""
        return os.path.join(self.directory, "eval_list.txt")

    def definition(self) -> dict[str, Any]:
        """What the marker hashes: flags, data lists, replay weights, processes."""
        return {**{f"flag.{k}": v for k, v in self.flags.items()}, "data_list": self.data_list,
                "eval_list": self.eval_list, "replay_weights": list(self.weights),
                "nproc": self.stage.nproc}


def _resolve_usage(method: Method) -> Method:
    continues = get_meta_schedule(method.schedule).continues
    usage = method.warmup_usage or ("first" if continues else "all")
    return dataclasses.replace(method, warmup_usage=usage)


def check_methods(plan: Plan) -> tuple[Method, ...]:
    """Each stage's method with defaults resolved, checked.

    Raises:
        PlanError: Unknown values, a continuing schedule without carry_optimizer (or with
            rewarming / per-stage changes), a restarting schedule with carry_optimizer.
    """
    methods = tuple(_resolve_usage(s.method) for s in plan.stages)
    for stage, m in zip(plan.stages, methods, strict=True):
        where = f"{plan.path}: stage {stage.key!r}: method"
        spec = get_meta_schedule(m.schedule)
        if m.warmup_usage not in WARMUP_USAGES:
            raise PlanError(f"{where}.warmup_usage: {m.warmup_usage!r}; known: {', '.join(WARMUP_USAGES)}")
        if m.ar_schedule_mode not in AR_MODES:
            raise PlanError(f"{where}.ar_schedule_mode: {m.ar_schedule_mode!r}; known: {', '.join(AR_MODES)}")
        if not 0 <= m.min_lr <= m.lr:
            raise PlanError(f"{where}: needs 0 <= min_lr <= lr, got min_lr {m.min_lr}, lr {m.lr}")
        if spec.continues and not m.carry_optimizer:
            raise PlanError(
                f"{where}.schedule: {m.schedule} continues one LR schedule across stages, which needs "
                "carry_optimizer: true (with a fresh optimizer every stage would restart its schedule "
                "at step 0 and rewarm); use cosine, ar-cosine, rsqrt or constant, or set carry_optimizer: true")
        if not spec.continues and m.carry_optimizer:
            raise PlanError(
                f"{where}.schedule: {m.schedule} restarts its schedule every stage, but carry_optimizer: "
                "true continues the checkpoint's step and schedule; use wsd, inf-cosine, inf-rsqrt or "
                "cosine-continued, or carry_optimizer: false")
        if spec.continues and m.warmup_usage == "all":
            raise PlanError(f"{where}.warmup_usage: all would rewarm every stage of the continuing schedule "
                            f"{m.schedule}; use first (the default) or none")
        for name in SCHEDULE_FIELDS if spec.continues else ():
            if getattr(m, name) != getattr(methods[0], name):
                raise PlanError(f"{where}.{name}: {getattr(m, name)!r} differs from the first stage's "
                                f"{getattr(methods[0], name)!r}; a continuing schedule is one schedule "
                                "for the whole plan")
    return methods


def sources_of(plan: Plan) -> tuple[tuple[str, str], ...]:
    """Replay sources in order: D_0 (``base_data`` or the first stage's data), then the stages'."""
    base = (("base", plan.base_data),) if plan.base_data else ()
    return base + tuple((s.key, s.data) for s in plan.stages)


def _trainer_args(plan: Plan, stage: Stage) -> dict[str, Any]:
    args = {**plan.args, **stage.args}
    owned = sorted(set(args) & set(RUNNER_FLAGS))
    if owned:
        raise PlanError(f"{plan.path}: stage {stage.key!r}: args {owned} are set by the runner "
                        "(stage data, length, checkpoints); use the plan's stage fields instead")
    return args


def _method_flags(method: Method) -> dict[str, Any]:
    flags: dict[str, Any] = {"optimizer": method.optimizer}
    for prefix in ("ewc", "lwf"):
        block = getattr(method, prefix)
        if block.get("weight"):
            flags.update({f"{prefix}_{k}": v for k, v in block.items()})
    return flags


def build_stage_specs(plan: Plan, stage_iters: tuple[int, ...]) -> list[StageSpec]:
    """Every stage's flags, replay weights and data list.

    Args:
        plan: The plan.
        stage_iters: Iterations of every stage (tokens already converted).

    Raises:
        PlanError: Flags the runner owns in ``args``, a flag set both by ``args`` and the method,
            impossible schedules or replay weights.
    """
    methods = check_methods(plan)
    sources = sources_of(plan)
    offset = 1 if plan.base_data else 0
    tokens = None
    if any(m.replay.pool == "tokens" and m.replay.policy != "none" for m in methods):
        tokens = [list_tokens(path) for _, path in sources]
    specs = []
    for i, (stage, method) in enumerate(zip(plan.stages, methods, strict=True)):
        where = f"{plan.path}: stage {stage.key!r}"
        ctx = StageContext(index=i, method=method, stage_iters=stage_iters)
        try:
            lr_flags = get_meta_schedule(method.schedule).flags(ctx)
            t = i + offset
            weights = replay_weights(method.replay, t, tokens[: t + 1] if tokens else None)
        except PlanError:
            raise
        except Exception as e:  # ConfigError from the schedule or replay: name the stage
            raise PlanError(f"{where}: {e}") from None
        args = _trainer_args(plan, stage)
        extra = {**_method_flags(method), **lr_flags}
        clash = sorted(k for k in set(args) & set(extra) if args[k] != extra[k])
        if clash:
            raise PlanError(f"{where}: args {clash} conflict with the method's values; set them in "
                            "the plan's method block")
        directory = plan.stage_dir(stage.key)
        flags = {**({"config": plan.config} if plan.config else {}),
                 "tensorboard_dir": os.path.join(directory, "tensorboard"), **args, **extra,
                 "save": directory,
                 **({"valid_data_file_list": os.path.join(directory, "eval_list.txt")}
                    if stage.eval_data else {})}
        header = [f"continual plan {plan.name}, stage {stage.key} (source {t}): replay "
                  f"{method.replay.policy}"]
        specs.append(StageSpec(
            index=i, stage=stage, directory=directory, flags=flags,
            continues=get_meta_schedule(method.schedule).continues and i > 0,
            sources=sources[: t + 1], weights=tuple(weights),
            data_list=blended_list(sources[: t + 1], weights, header),
            eval_list=blended_list([(stage.key, stage.eval_data)], [1.0], [f"held-out data of stage {stage.key}"])
            if stage.eval_data else None))
    return specs
