"""The AdamW update of the side groups of matrix optimizers (muon, dshampoo): embeddings, head,
norms and biases. Same arithmetic, in the same order, as ``torch.optim.AdamW``'s single-tensor path,
so a side group matches torch bit for bit; the group-rule check both optimizers share; and the
closure call every optimizer of ours (muon, dshampoo, sophia) makes in ``step``.
Torch-free at import time."""

from __future__ import annotations

import math
from typing import Any


def adamw_step_(p: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One AdamW step on ``p`` (which has ``.grad``) with ``group``'s lr, betas, eps, weight decay."""
    import torch

    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    state["step"] += 1
    t = state["step"]
    grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
    p.mul_(1.0 - lr * wd)
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2**t)).add_(eps)
    p.addcdiv_(exp_avg, denom, value=-lr / (1.0 - beta1**t))


def check_group_rules(optimizer: Any, name: str) -> None:
    """Every param group of a matrix optimizer is ``matrix`` or ``adamw`` (the side group).

    Raises:
        ValueError: Naming the optimizer and the unknown rule.
    """
    for group in optimizer.param_groups:
        if group["rule"] not in ("matrix", "adamw"):
            raise ValueError(f"{name}: group rule must be 'matrix' or 'adamw', got {group['rule']!r}")


def closure_loss(closure: Any) -> Any:
    """``torch.optim``'s ``step(closure)`` convention: re-evaluate the loss with grad enabled."""
    if closure is None:
        return None
    import torch

    with torch.enable_grad():
        return closure()
