"""The schedule registry: ``--lr-decay-style NAME`` -> a ``ScheduleSpec``.

A spec turns the resolved run plan into the keyword arguments of its pure function, so a new
schedule is one ``register_schedule`` call next to its function. Torch-free.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from megatron.config.fields import ConfigError
from megatron.registry import Registry
from megatron.schedules import functions as F

ScheduleFn = Callable[..., float]


class SchedulePlan(Protocol):
    """What schedule arguments are computed from: the run plan (``megatron.plan.run.RunPlan``
    satisfies it; registries sit below the plan and never import it)."""

    train_iters: int
    warmup_steps: int | float
    decay_steps: int | float
    global_batch_size: int
    min_lr_ratio: float
    config: Any
    schedule_state: dict[str, Any]  # set by resolve (``schedule_state`` computes it from the rest)


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduleSpec:
    """One registered LR schedule.

    Attributes:
        name: The ``--lr-decay-style`` value.
        fn: The pure function ``fn(step, **kwargs) -> multiplier``.
        kwargs: ``kwargs(plan) -> dict`` of the function's keyword arguments.
        decays: False when the LR stays at eta_max after warmup (allowed with schedule-free).
        user_facing: False for internal entries a flag selects (``lr-range`` is ``--lr-finder``).
    """

    name: str
    fn: ScheduleFn
    kwargs: Callable[[SchedulePlan], dict[str, Any]]
    decays: bool = True
    user_facing: bool = True


SCHEDULES: Registry[ScheduleSpec] = Registry("LR schedule", "--lr-decay-style")
"""``--lr-decay-style`` value -> spec (every entry is registered in this module)."""


def register_schedule(spec: ScheduleSpec) -> ScheduleSpec:
    """Add ``spec`` to the registry (a name registered twice is a ``ValueError``)."""
    return SCHEDULES.add(spec.name, spec)


def _decay_kwargs(plan: SchedulePlan) -> dict[str, Any]:
    return {
        "warmup_steps": plan.warmup_steps,
        "decay_steps": plan.decay_steps,
        "min_ratio": plan.min_lr_ratio,
    }


register_schedule(ScheduleSpec(name="cosine", fn=F.cosine, kwargs=_decay_kwargs))
register_schedule(ScheduleSpec(name="linear", fn=F.linear, kwargs=_decay_kwargs))
register_schedule(
    ScheduleSpec(
        name="constant",
        fn=F.constant,
        kwargs=lambda plan: {"warmup_steps": plan.warmup_steps},
        decays=False,
    )
)


def _wsd_cooldown(plan: SchedulePlan) -> int | float:
    """The WSD cooldown in steps as Megatron sizes it: a whole number of samples,
    ``floor(frac * S * global batch)``, so real-valued in steps."""
    gbs = plan.global_batch_size
    samples = math.floor(plan.config.schedule.lr_constant_plus_cooldown_frac * plan.decay_steps * gbs)
    return samples // gbs if samples % gbs == 0 else samples / gbs


def _wsd_kwargs(plan: SchedulePlan) -> dict[str, Any]:
    s = plan.config.schedule
    return {
        "warmup_steps": plan.warmup_steps,
        "total_steps": plan.decay_steps,
        "cooldown_steps": _wsd_cooldown(plan),
        "min_ratio": plan.min_lr_ratio,
        "shape": s.lr_cooldown_shape,
    }


def _rsqrt_kwargs(plan: SchedulePlan) -> dict[str, Any]:
    if plan.warmup_steps == 0:
        raise ConfigError("--lr-warmup-iters: the rsqrt schedule needs a warmup (W > 0)")
    cooldown = plan.config.schedule.lr_rsqrt_cooldown or 0
    if cooldown > plan.decay_steps - plan.warmup_steps:
        raise ConfigError(
            f"--lr-rsqrt-cooldown: {cooldown} steps do not fit after the warmup of "
            f"{plan.warmup_steps} in {plan.decay_steps} steps"
        )
    return {
        "warmup_steps": plan.warmup_steps,
        "total_steps": plan.decay_steps,
        "cooldown_steps": cooldown,
        "min_ratio": plan.min_lr_ratio,
    }


def _whole(x: float) -> int | float:
    """``x`` as an int when it is whole up to rounding error (keeps fingerprints readable)."""
    return round(x) if abs(x - round(x)) < 1e-9 else x


def _infinite_kwargs(plan: SchedulePlan) -> dict[str, Any]:
    s, lr = plan.config.schedule, plan.config.optim.lr
    if s.constant_lr is None:
        raise ConfigError(f"--constant-lr: required by --lr-decay-style {s.lr_decay_style} (eta_const)")
    if not s.min_lr < s.constant_lr <= lr:
        raise ConfigError(
            f"--constant-lr: needs --min-lr < --constant-lr <= --lr, got {s.min_lr} < {s.constant_lr} <= {lr}"
        )
    # Real-valued phase lengths, as Megatron's fractions of the decay (123.4 steps, not 123).
    steps = plan.decay_steps - plan.warmup_steps
    cooldown = _whole(s.lr_cooldown_fraction * plan.decay_steps)
    if s.lr_constant_fraction is None:
        constant, anneal = max(steps - cooldown, 0), 0
    else:
        constant = _whole(s.lr_constant_fraction * plan.decay_steps)
        anneal = steps - cooldown - constant
        if anneal < -1e-9:
            raise ConfigError(
                f"--lr-constant-fraction: warmup {plan.warmup_steps} + cooldown {cooldown} + constant "
                f"{constant} steps exceed the {plan.decay_steps} decay steps"
            )
        anneal = _whole(max(anneal, 0))
        if anneal > 1e-9 and s.min_lr <= 0:
            raise ConfigError("--min-lr: the geometric anneal of an infinite schedule needs --min-lr > 0")
    kwargs = {
        "warmup_steps": plan.warmup_steps,
        "cooldown_steps": cooldown,
        "constant_steps": constant,
        "anneal_steps": anneal,
        "const_ratio": s.constant_lr / lr,
        "min_ratio": plan.min_lr_ratio,
        "decay_steps": plan.decay_steps,
    }
    if s.lr_decay_style == "infinite-inv-square-root":
        kwargs["timescale"] = s.timescale
    return kwargs


register_schedule(ScheduleSpec(name="wsd", fn=F.wsd, kwargs=_wsd_kwargs))
register_schedule(
    ScheduleSpec(
        name="inverse-square-root",
        fn=F.inverse_square_root,
        kwargs=lambda plan: {"warmup_steps": plan.warmup_steps, "min_ratio": plan.min_lr_ratio,
                             "decay_steps": plan.decay_steps},
    )
)
register_schedule(ScheduleSpec(name="rsqrt", fn=F.rsqrt_cooldown, kwargs=_rsqrt_kwargs))
register_schedule(ScheduleSpec(name="infinite-cosine", fn=F.infinite_cosine, kwargs=_infinite_kwargs))
register_schedule(
    ScheduleSpec(name="infinite-inv-square-root", fn=F.infinite_inv_sqrt, kwargs=_infinite_kwargs)
)


register_schedule(
    ScheduleSpec(
        name="lr-range",
        fn=F.lr_range,
        user_facing=False,
        kwargs=lambda plan: {
            "total_steps": plan.train_iters,
            "start": plan.config.schedule.lr_finder_start,
            "end": plan.config.schedule.lr_finder_end,
            "base_lr": plan.config.optim.lr,
        },
    )
)


def schedule_names() -> list[str]:
    """The ``--lr-decay-style`` values (internal entries such as ``lr-range`` excluded)."""
    return sorted(name for name, spec in SCHEDULES.items() if spec.user_facing)


def schedule_name(s: Any) -> str:
    """The registry entry a schedule config (``plan.config.schedule``) uses: ``--lr-finder`` is
    ``lr-range``, ``constant`` + ``--lr-constant-plus-cooldown`` is ``wsd``."""
    if s.lr_finder:
        return "lr-range"
    return "wsd" if s.lr_constant_plus_cooldown else s.lr_decay_style


def _bind(name: str, kwargs: dict[str, Any], lr: float) -> tuple[Callable[[int], float], str]:
    args = ",".join(f"{k}={kwargs[k]!r}" for k in sorted(kwargs))
    return functools.partial(SCHEDULES.get(name).fn, **kwargs), f"{name}({args})@lr={lr!r}"


def schedule_state(plan: SchedulePlan) -> dict[str, Any]:
    """The plan's schedule as data: ``{"name", "kwargs", "lr"}`` (stored in checkpoints).
    Computed once, by ``resolve``; everything after reads ``RunPlan.schedule_state``."""
    name = schedule_name(plan.config.schedule)
    return {"name": name, "kwargs": SCHEDULES.get(name).kwargs(plan), "lr": plan.config.optim.lr}


def schedule_from_state(state: dict[str, Any]) -> tuple[Callable[[int], float], str]:
    """Rebuild a schedule stored by ``schedule_state`` (``--use-checkpoint-opt_param-scheduler``)."""
    return _bind(state["name"], dict(state["kwargs"]), state["lr"])


def cooldown_start(state: dict[str, Any]) -> int | None:
    """The first step of the final cooldown of the schedule ``state`` (``schedule_state``; CPT
    restarts from the step before), if any."""
    k = state["kwargs"]
    start = None
    if state["name"] in ("wsd", "rsqrt") and k["cooldown_steps"] > 0:
        start = k["total_steps"] - k["cooldown_steps"]
    if state["name"].startswith("infinite-") and k["anneal_steps"] > 0:
        start = k["warmup_steps"] + k["cooldown_steps"] + k["constant_steps"]
    # Phase lengths may be real: the first whole step at or after the join.
    return None if start is None else math.ceil(start - 1e-9)


def build_schedule_fn(plan: SchedulePlan) -> tuple[Callable[[int], float], str]:
    """The resolved plan's schedule (``plan.schedule_state``) as ``step -> multiplier`` and its
    fingerprint.

    The fingerprint names the function and every argument; a checkpoint stores it so that a
    resumed run can tell whether the schedule changed.
    """
    return schedule_from_state(plan.schedule_state)
