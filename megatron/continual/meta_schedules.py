"""Per-stage LR meta-schedules of a continual run (spec continual.md section 2).

A meta-schedule says which LR schedule each stage trains with, as trainer flags. Two kinds:

* **restarting** (cyclic ``cosine``, TiC-LM's ``ar-cosine``, ``rsqrt``, ``constant``,
  ``schedule-free``): every stage is a fresh run from the previous stage's weights
  (``--finetune``: new optimizer, schedule at step 0) with its own peak, warmup and decay;
* **continuing** (``wsd``, ``inf-cosine``, ``inf-rsqrt``, ``cosine-continued``): one schedule
  over the whole plan, each stage continuing the step counter, optimizer and schedule of the
  previous one (``--reset-data-state``); nothing rewarms and only the final stage anneals
  (infinite schedules: Ibrahim et al. 2024, https://arxiv.org/abs/2403.08763).

The AR meta-schedule (TiC-LM, Li et al. 2025, https://arxiv.org/abs/2504.02107) reads stage i's
peak from one virtual cosine over all stages: eta_i = eta_min + (eta_0 - eta_min) * (1 + cos(pi *
i / (i + 1))) / 2 when every stage warms up (``closed_form``); ``anchor`` reproduces the
reference loop's bookkeeping, which differs under ``warmup_usage: first``. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from megatron.config.fields import ConfigError
from megatron.registry import Registry

if TYPE_CHECKING:
    from megatron.continual.plan import Method


def ar_peak_closed_form(i: int, *, lr: float, min_lr: float) -> float:
    """Peak LR of stage ``i`` (0-based) of the AR meta-schedule with a warmup in every stage."""
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * i / (i + 1)))


def _open_lm_cosine(step: int, *, base_lr: float, warmup: int, steps: int, end_lr: float) -> float:
    """The reference cosine: warmup (s + 1) / W, then a half cosine from base_lr to end_lr."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    e, es = step - warmup, steps - warmup
    return end_lr + 0.5 * (1.0 + math.cos(math.pi * e / es)) * (base_lr - end_lr)


def ar_peak_anchor(
    i: int, *, lr: float, min_lr: float, warmup_iters: int, stage_iters: int, warmup_usage: str
) -> float:
    """Peak LR of stage ``i`` exactly as the reference loop computes it (its warmup bookkeeping).

    The loop keeps a per-round warmup ``w`` (W at the start) and a virtual warmup ``W_v``. At the
    top of round r it sets ``W_v = w`` (r = 0) or ``W_v += w`` and reads the peak from the virtual
    cosine of length S (r + 1) and warmup ``W_v`` at step ``S r + w``; only afterwards, in the same
    round, it sets ``w = 0`` (usage ``none``, or usage ``first`` when r > 0). So under ``first``
    round 1 still sees ``W_v = 2W, w = W`` (the closed form) and from round 2 on ``W_v = 2W, w = 0``;
    under ``none`` rounds from 1 on see ``W_v = W, w = 0``.
    """
    current, virtual, peak = warmup_iters, 0, lr
    for r in range(i + 1):
        virtual = current if r == 0 else virtual + current
        peak = _open_lm_cosine(stage_iters * r + current, base_lr=lr, warmup=virtual,
                               steps=stage_iters * (r + 1), end_lr=min_lr)
        if warmup_usage == "none" or (warmup_usage == "first" and r > 0):
            current = 0
    return peak


@dataclass(frozen=True, kw_only=True, slots=True)
class StageContext:
    """What a meta-schedule needs to know about one stage.

    Attributes:
        index: The stage's position in the plan (0-based).
        method: The stage's method (plan defaults plus its overrides).
        stage_iters: Iterations of every stage of the plan, in order.
    """

    index: int
    method: Method
    stage_iters: tuple[int, ...]

    @property
    def offset(self) -> int:
        """Iterations of all stages before this one."""
        return sum(self.stage_iters[: self.index])

    @property
    def total(self) -> int:
        """Iterations of the whole plan."""
        return sum(self.stage_iters)

    @property
    def warmup(self) -> int:
        """This stage's warmup: W where ``warmup_usage`` applies (all / first), else 0."""
        usage = self.method.warmup_usage
        applies = usage == "all" or (usage == "first" and self.index == 0)
        return self.method.warmup_iters if applies else 0

    @property
    def plan_warmup(self) -> int:
        """Continuing schedules: the one warmup at the start of the plan (0 under usage none)."""
        return 0 if self.method.warmup_usage == "none" else self.method.warmup_iters


@dataclass(frozen=True, kw_only=True, slots=True)
class MetaScheduleSpec:
    """One registered meta-schedule.

    Attributes:
        name: The plan's ``method.schedule`` value.
        continues: One schedule across all stages (needs ``carry_optimizer: true``).
        flags: ``flags(ctx) -> {trainer flag field: value}`` for the stage.
    """

    name: str
    continues: bool
    flags: Callable[[StageContext], dict[str, Any]]


META_SCHEDULES: Registry[MetaScheduleSpec] = Registry(
    "meta-schedule (the plan's method.schedule)", "--lr-scheduler"
)
"""The plan's ``method.schedule`` (runner flag ``--lr-scheduler``) -> spec."""


def register_meta_schedule(name: str, *, continues: bool):
    """Decorator: register ``fn(ctx) -> flags`` as meta-schedule ``name``."""

    def wrap(fn: Callable[[StageContext], dict[str, Any]]) -> Callable[[StageContext], dict[str, Any]]:
        META_SCHEDULES.add(name, MetaScheduleSpec(name=name, continues=continues, flags=fn))
        return fn

    return wrap


def get_meta_schedule(name: str) -> MetaScheduleSpec:
    """``META_SCHEDULES.get(name)``.

    Raises:
        ConfigError: Unknown name (lists the known ones).
    """
    return META_SCHEDULES.get(name)


def _restart(ctx: StageContext, style: str, lr: float) -> dict[str, Any]:
    m = ctx.method
    return {"lr": lr, "min_lr": m.min_lr, "lr_warmup_iters": ctx.warmup, "lr_decay_style": style,
            "train_iters": ctx.stage_iters[ctx.index]}


@register_meta_schedule("cosine", continues=False)
def _cyclic_cosine(ctx: StageContext) -> dict[str, Any]:
    """The same peak every stage, warmup and cosine to min_lr inside each stage."""
    return _restart(ctx, "cosine", ctx.method.lr)


@register_meta_schedule("ar-cosine", continues=False)
def _ar_cosine(ctx: StageContext) -> dict[str, Any]:
    """TiC-LM's AR meta-schedule: the stage's peak from the virtual cosine, then its own cosine."""
    m = ctx.method
    if m.ar_schedule_mode == "closed_form":
        peak = ar_peak_closed_form(ctx.index, lr=m.lr, min_lr=m.min_lr)
    else:
        peak = ar_peak_anchor(ctx.index, lr=m.lr, min_lr=m.min_lr, warmup_iters=m.warmup_iters,
                              stage_iters=ctx.stage_iters[ctx.index], warmup_usage=m.warmup_usage)
    return _restart(ctx, "cosine", peak)


@register_meta_schedule("rsqrt", continues=False)
def _rsqrt(ctx: StageContext) -> dict[str, Any]:
    """rsqrt decay with a linear cooldown at the end of every stage (restarts each stage)."""
    if ctx.warmup == 0:
        raise ConfigError(
            f"method.warmup_usage: the rsqrt schedule needs a warmup in every stage (stage "
            f"{ctx.index} has none: eta sqrt(W/s) is undefined at W = 0); use warmup_usage: all"
        )
    return {**_restart(ctx, "rsqrt", ctx.method.lr), "lr_rsqrt_cooldown": ctx.method.lr_rsqrt_cooldown}


@register_meta_schedule("constant", continues=False)
def _constant(ctx: StageContext) -> dict[str, Any]:
    """Warmup, then the peak for the whole stage."""
    return _restart(ctx, "constant", ctx.method.lr)


@register_meta_schedule("schedule-free", continues=False)
def _schedule_free(ctx: StageContext) -> dict[str, Any]:
    """Schedule-free AdamW at a constant LR (its averaging replaces the decay)."""
    return {**_restart(ctx, "constant", ctx.method.lr), "optimizer": "schedulefree"}


def _continued(ctx: StageContext, style: str) -> dict[str, Any]:
    m = ctx.method
    return {"lr": m.lr, "min_lr": m.min_lr, "lr_warmup_iters": ctx.plan_warmup, "lr_decay_style": style,
            "lr_decay_iters": ctx.total, "train_iters": ctx.offset + ctx.stage_iters[ctx.index]}


def _final_stage_only(ctx: StageContext, start: int, what: str) -> None:
    last = sum(ctx.stage_iters[:-1])
    if start < last:
        raise ConfigError(
            f"method.cooldown_fraction: the {what} of schedule {ctx.method.schedule} starts at "
            f"iteration {start}, before the final stage (which starts at {last}); an earlier stage "
            "would anneal and the next one continue from a low LR. Lower cooldown_fraction to at "
            f"most {(ctx.total - last) / ctx.total:.4g}"
        )


@register_meta_schedule("wsd", continues=True)
def _wsd(ctx: StageContext) -> dict[str, Any]:
    """Warmup-stable-decay across the plan: the cooldown is the last part of the final stage."""
    frac = ctx.method.cooldown_fraction
    _final_stage_only(ctx, ctx.total - int(frac * ctx.total), "cooldown")
    return {**_continued(ctx, "constant"), "lr_constant_plus_cooldown": True,
            "lr_constant_plus_cooldown_frac": frac}


@register_meta_schedule("cosine-continued", continues=True)
def _cosine_continued(ctx: StageContext) -> dict[str, Any]:
    """One warmup and one cosine over all stages (the step counter carries across stages)."""
    return _continued(ctx, "cosine")


def _infinite(ctx: StageContext, style: str) -> dict[str, Any]:
    m = ctx.method
    if m.constant_lr is None:
        raise ConfigError(f"method.constant_lr: schedule {m.schedule} needs eta_const (constant_lr)")
    # Anneal exactly over the final stage: constant until its first iteration.
    last = sum(ctx.stage_iters[:-1])
    cooldown = int(round(m.lr_cooldown_fraction * ctx.total))
    constant = last - ctx.plan_warmup - cooldown
    if constant < 0:
        raise ConfigError(
            f"method.lr_cooldown_fraction: warmup {ctx.plan_warmup} + cooldown {cooldown} iterations "
            f"do not end before the final stage starts (iteration {last}); shorten them"
        )
    return {**_continued(ctx, style), "constant_lr": m.constant_lr,
            "lr_cooldown_fraction": m.lr_cooldown_fraction,
            "lr_constant_fraction": constant / ctx.total}


@register_meta_schedule("inf-cosine", continues=True)
def _inf_cosine(ctx: StageContext) -> dict[str, Any]:
    """Infinite cosine: cooldown to eta_const, constant through every stage, anneal in the last."""
    return _infinite(ctx, "infinite-cosine")


@register_meta_schedule("inf-rsqrt", continues=True)
def _inf_rsqrt(ctx: StageContext) -> dict[str, Any]:
    """Infinite inverse-square-root: like inf-cosine with an rsqrt cooldown."""
    return _infinite(ctx, "infinite-inv-square-root")
