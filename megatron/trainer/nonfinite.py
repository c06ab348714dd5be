"""Non-finite guard: a step whose loss or gradient norm is NaN/inf does not update the model.

The guard sits inside the optimizer's ``step`` (the innermost torch optimizer, which DeepSpeed's
ZeRO, bf16 and plain fp32 paths all call after computing and clipping the global gradient norm):
the first call of a step decides, from the global norm DeepSpeed just computed and the step's
losses, whether this step updates; every rank reaches the same decision (one MAX all-reduce of a
flag). A skipped step leaves weights and optimizer states (moments, step counters) untouched.

Deciding needs one host read of that flag per step (the only one in a step that does not log);
``--max-nonfinite-steps 0`` turns the guard off and with it that read. fp16 runs keep DeepSpeed's
own overflow skipping (it does not call the optimizer on an overflow).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient norm: the run diverged."""


class NonFiniteGuard:
    """Skips the optimizer update of a step whose loss or global gradient norm is not finite.

    Args:
        optimizer: The torch optimizer DeepSpeed steps (its ``step`` is wrapped).
        grad_norm: Returns the step's global gradient norm as DeepSpeed computed it (or None).
        device: Where the agreement flag is reduced.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, grad_norm: Callable[[], Any], device: torch.device):
        self.optimizer = optimizer
        self.grad_norm = grad_norm
        self.device = device
        self.skipped = False
        self._decided: bool | None = None
        self._loss_ok: torch.Tensor | None = None
        self._step = optimizer.step
        optimizer.step = self._guarded_step  # type: ignore[method-assign]

    def begin_step(self) -> None:
        """Forget the previous step's decision (before the step's first micro-batch)."""
        self._decided = None
        self._loss_ok = None
        self.skipped = False

    def watch_loss(self, loss: torch.Tensor) -> None:
        """Include a micro-batch's loss in the decision (device ops only)."""
        ok = torch.isfinite(loss.detach()).all()
        self._loss_ok = ok if self._loss_ok is None else self._loss_ok & ok

    def _finite_now(self) -> bool:
        norm = self.grad_norm()
        if norm is None:  # no clipping: DeepSpeed computed no norm; look at the gradients
            grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.stack(torch._foreach_norm(grads)).sum() if grads else torch.zeros(())
        ok = torch.isfinite(torch.as_tensor(norm, dtype=torch.float32)).to(self.device)
        if self._loss_ok is not None:
            ok = ok & self._loss_ok.to(self.device)
        bad = (~ok).float().reshape(1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # loss differs by rank: all must agree
        return not bool(bad.item())  # the guard's one host read of the step

    def _guarded_step(self, *args: Any, **kwargs: Any) -> Any:
        # ZeRO calls step once per parameter group: the first call decides for the whole step.
        if self._decided is None:
            self._decided = self._finite_now()
            self.skipped = not self._decided
        if not self._decided:
            return None
        return self._step(*args, **kwargs)


class NonFiniteCounter:
    """Counts consecutive skipped steps and stops the run after ``limit`` of them.

    Args:
        limit: ``--max-nonfinite-steps``.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.consecutive = 0
        self.total = 0

    def update(self, skipped: bool, iteration: int) -> None:
        """Account step ``iteration``.

        Raises:
            NonFiniteLoss: ``limit`` consecutive steps were non-finite.
        """
        if not skipped:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        log.warning("iteration %d: non-finite loss or gradient norm; update skipped (%d in a row, "
                    "--max-nonfinite-steps %d)", iteration, self.consecutive, self.limit)
        if self.consecutive >= self.limit:
            raise NonFiniteLoss(
                f"--max-nonfinite-steps: {self.consecutive} consecutive steps (up to iteration "
                f"{iteration}) had a non-finite loss or gradient norm; stopped without saving. "
                "Lower --lr, add warmup, or resume from the last checkpoint with other settings"
            )
