"""dshampoo's torch side: the inverse 4th root and the ``DShampoo`` optimizer class.

The update rule and the refusals are described in ``shampoo.py`` (the torch-free registration
module, which imports this one inside ``build_dshampoo``).
"""

from __future__ import annotations

from typing import Any

import torch

from megatron.optimizer.adamw_side import adamw_step_, check_group_rules, closure_loss
from megatron.optimizer.shampoo import DShampooOptions, block_slices


def inverse_fourth_root(stat: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``(stat + eps I)^(-1/4)`` of a symmetric PSD matrix, eps = epsilon * max eigenvalue.

    Computed in float64 by ``torch.linalg.eigh``; returned in ``stat``'s dtype.
    """
    sym = stat.to(torch.float64)
    sym = (sym + sym.T) / 2
    eigvals, eigvecs = torch.linalg.eigh(sym)
    top = eigvals.max()
    # Tensor ops, not Python branches: no device sync per block on GPU.
    eps = torch.where(top > 0, epsilon * top, torch.full_like(top, epsilon))
    roots = (eigvals.clamp(min=0.0) + eps).pow(-0.25)
    return ((eigvecs * roots) @ eigvecs.T).to(stat.dtype)


class DShampoo(torch.optim.Optimizer):
    """Block-diagonal Shampoo (group ``rule="matrix"``) plus AdamW (``rule="adamw"``).

    Args:
        params: Param groups; each has ``rule`` ``matrix`` or ``adamw`` (default ``matrix``).
        lr: Learning rate.
        betas: Adam betas (AdamW side groups; beta2 also for Adam grafting).
        eps: Adam epsilon (side groups and Adam grafting).
        weight_decay: Decoupled weight decay.
        options: ``DShampooOptions``; None takes the defaults.
    """

    def __init__(
        self,
        params: Any,
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        options: DShampooOptions | None = None,
    ):
        opts = options or DShampooOptions()
        defaults = {
            "rule": "matrix",
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "max_preconditioner_dim": opts.max_preconditioner_dim,
            "precondition_frequency": opts.precondition_frequency,
            "start_preconditioning_step": opts.start_preconditioning_step,
            "epsilon": opts.epsilon,
            "beta2": opts.beta2,
            "momentum": opts.momentum,
            "grafting": opts.grafting,
        }
        super().__init__(params, defaults)
        check_group_rules(self, "dshampoo")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure_loss(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["rule"] == "adamw":
                    self._adamw(p, group)
                else:
                    self._shampoo(p, group)
        return loss

    def _adamw(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        adamw_step_(p, self.state[p], group)

    def _shampoo(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        if p.ndim != 2:
            raise RuntimeError(
                f"dshampoo: a matrix-group tensor has shape {tuple(p.shape)}; Shampoo needs "
                "whole 2-D matrices (ZeRO and DeepSpeed's bf16/fp16 wrappers may hand the "
                "optimizer flat 1-D shards); use --zero-stage 0 or another optimizer"
            )
        blocks = block_slices(tuple(p.shape), group["max_preconditioner_dim"])
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["momentum_buffer"] = torch.zeros_like(p)
            if group["grafting"] == "adam":
                state["exp_avg_sq"] = torch.zeros_like(p)
            for b, (rows, cols) in enumerate(blocks):
                n_rows, n_cols = rows.stop - rows.start, cols.stop - cols.start
                for key, n in (("L", n_rows), ("R", n_cols)):
                    state[f"{key}_{b}"] = p.new_zeros(n, n)
                    state[f"{key}_inv_{b}"] = torch.eye(n, dtype=p.dtype, device=p.device)
        state["step"] += 1
        t = state["step"]
        g = p.grad
        beta2 = group["beta2"]
        start = group["start_preconditioning_step"]
        precondition = t >= start
        refresh = precondition and (t - start) % group["precondition_frequency"] == 0

        if group["grafting"] == "adam":
            adam_beta2 = group["betas"][1]
            state["exp_avg_sq"].mul_(adam_beta2).addcmul_(g, g, value=1 - adam_beta2)
            denom = (state["exp_avg_sq"] / (1 - adam_beta2**t)).sqrt_().add_(group["eps"])
            graft = g / denom
        else:
            graft = g

        direction = graft.clone() if precondition else graft
        for b, (rows, cols) in enumerate(blocks):
            g_b = g[rows, cols]
            left, right = state[f"L_{b}"], state[f"R_{b}"]
            if beta2 == 1.0:
                left.addmm_(g_b, g_b.T)
                right.addmm_(g_b.T, g_b)
            else:
                left.mul_(beta2).addmm_(g_b, g_b.T, alpha=1 - beta2)
                right.mul_(beta2).addmm_(g_b.T, g_b, alpha=1 - beta2)
            if refresh:
                state[f"L_inv_{b}"].copy_(inverse_fourth_root(left, group["epsilon"]))
                state[f"R_inv_{b}"].copy_(inverse_fourth_root(right, group["epsilon"]))
            if precondition:
                pre = state[f"L_inv_{b}"] @ g_b @ state[f"R_inv_{b}"]
                if group["grafting"] != "none":
                    # A zero block stays zero (clamp avoids 0/0 without a device sync).
                    pre = pre * (graft[rows, cols].norm() / pre.norm().clamp(min=1e-30))
                direction[rows, cols] = pre

        buf = state["momentum_buffer"]
        momentum = group["momentum"]
        if momentum > 0:
            buf.mul_(momentum).add_(direction, alpha=1 - momentum)
        else:
            buf.copy_(direction)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(buf, alpha=-group["lr"])
