"""The stateful wrapper around a pure schedule: sets each group's LR from the step.

``group["lr"] = group["base_lr"] * fn(step)``. Its state is ``{"step", "schedule_fingerprint"}``;
the LR itself is never saved, it is recomputed from the step on load (STYLE section 4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class LRScheduler:
    """Drives the LR of an optimizer's param groups from a pure schedule function.

    Args:
        optimizer: Anything with ``param_groups`` (a torch optimizer).
        fn: ``step -> multiplier``.
        fingerprint: Identifies ``fn`` and its arguments.
        lr: eta_max; each group's ``base_lr`` is ``lr * group.get("lr_scale", 1.0)``.
    """

    def __init__(
        self,
        optimizer: Any,
        fn: Callable[[int], float],
        fingerprint: str,
        lr: float,
        schedule: dict[str, Any] | None = None,
    ):
        self.optimizer = optimizer
        self.step = 0
        self.replace(fn, fingerprint, lr, schedule)

    def replace(
        self, fn: Callable[[int], float], fingerprint: str, lr: float, schedule: dict[str, Any] | None = None
    ) -> None:
        """Drive the LR by another schedule (e.g. the one a checkpoint was trained with)."""
        self.fn = fn
        self.fingerprint = fingerprint
        self.lr = lr
        self.schedule = schedule
        for group in self.optimizer.param_groups:
            group["base_lr"] = lr * group.get("lr_scale", 1.0)
        self.set_step(self.step)

    def set_step(self, step: int) -> float:
        """Set every group's LR for optimizer step ``step``; returns the multiplier."""
        self.step = step
        multiplier = self.fn(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * multiplier
        return multiplier

    def current_lr(self) -> float:
        """LR of the first group (eta_max times the current multiplier)."""
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        """The step, the schedule's fingerprint and definition (never the current LR)."""
        return {"step": self.step, "schedule_fingerprint": self.fingerprint, "schedule": self.schedule}
