"""The schedule registry: ``--lr-decay-style NAME`` -> a ``ScheduleSpec``.

A spec turns the resolved run plan into the keyword arguments of its pure function, so a new
schedule is one ``register_schedule`` call next to its function. Torch-free.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from megatron.schedules import functions as F

if TYPE_CHECKING:
    from megatron.config.plan import RunPlan

ScheduleFn = Callable[..., float]


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduleSpec:
    """One registered LR schedule.

    Attributes:
        name: The ``--lr-decay-style`` value.
        fn: The pure function ``fn(step, **kwargs) -> multiplier``.
        kwargs: ``kwargs(plan) -> dict`` of the function's keyword arguments.
        decays: False when the LR stays at eta_max after warmup (allowed with schedule-free).
    """

    name: str
    fn: ScheduleFn
    kwargs: Callable[[RunPlan], dict[str, Any]]
    decays: bool = True


SCHEDULES: dict[str, ScheduleSpec] = {}


def register_schedule(spec: ScheduleSpec) -> ScheduleSpec:
    """Add ``spec`` to the registry (names are unique)."""
    if spec.name in SCHEDULES:
        raise ValueError(f"schedule {spec.name!r} registered twice")
    SCHEDULES[spec.name] = spec
    return spec


def _decay_kwargs(plan: RunPlan) -> dict[str, Any]:
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


def build_schedule_fn(plan: RunPlan) -> tuple[Callable[[int], float], str]:
    """The plan's schedule as ``step -> multiplier`` and its fingerprint.

    The fingerprint names the function and every argument; a checkpoint stores it so that a
    resumed run can tell whether the schedule changed.
    """
    spec = SCHEDULES[plan.config.schedule.lr_decay_style]
    kwargs = spec.kwargs(plan)
    args = ",".join(f"{k}={kwargs[k]!r}" for k in sorted(kwargs))
    fingerprint = f"{spec.name}({args})@lr={plan.config.optim.lr!r}"
    return functools.partial(spec.fn, **kwargs), fingerprint
