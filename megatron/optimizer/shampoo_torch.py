"""dshampoo's torch side: the inverse 4th root and the ``DShampoo`` optimizer class.

The update rule, the distributed layout and the refusals are described in ``shampoo.py`` (the
torch-free registration module, which imports this one inside ``build_dshampoo``). A step is the
element-wise part (grafting statistics, momentum, weight decay) on whatever this rank holds (a
matrix, a TP shard or a ZeRO partition) around the per-matrix part (``_precondition``: block
statistics, inverse roots, grafted preconditioned direction) that the matrix's owner runs on the
logical gradient and grafting direction.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from megatron.optimizer.adamw_side import adamw_step_, check_group_rules, closure_loss
from megatron.optimizer.matrix_distributed import (
    GroupLayout,
    Unit,
    gather_flat,
    group_size,
    run_units,
    step_units,
)
from megatron.optimizer.owners import balance, owned_key
from megatron.optimizer.shampoo_options import DShampooOptions, block_slices, shampoo_cost


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
        dp_group: The data-parallel group: ZeRO-1/2 partitions' matrices get one owner across it
            (at ZeRO-0 every DP replica runs every matrix, so its states are complete). None: DP=1.
        tp_group: The tensor-parallel group (needs ``bind``). None: TP=1.
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
        dp_group: Any = None,
        tp_group: Any = None,
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
        self.dp_group = dp_group
        self.tp_group = tp_group
        self.layouts: dict[str, GroupLayout] = {}
        check_group_rules(self, "dshampoo")

    def bind(self, layouts: dict[str, GroupLayout], tp_group: Any = None) -> None:
        """Where each matrix group's tensors live: TP shards, ZeRO partitions
        (``matrix_distributed.bind_layouts`` builds ``layouts``, keyed by group name)."""
        self.layouts = layouts
        self.tp_group = tp_group

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure_loss(closure)
        for group in self.param_groups:
            if group["rule"] == "adamw":
                for p in group["params"]:
                    if p.grad is not None:
                        adamw_step_(p, self.state[p], group)
                continue
            layout = self.layouts.get(group.get("name"))
            if layout is not None and layout.flat:
                self._flat_step(group, layout)
            else:
                self._matrix_step(group, layout)
        return loss

    def _matrix_step(self, group: dict[str, Any], layout: GroupLayout | None) -> None:
        """Whole matrices (one process, ZeRO-0) or TP shards of them."""
        params, units = step_units(group["params"], layout, "dshampoo", self._check_unbound)
        if not params:
            return
        grafts = [self._graft(p, self.state[p], group) for p in params]
        inputs = [torch.stack([p.grad, graft]) for p, graft in zip(params, grafts, strict=True)]
        t = self.state[params[0]]["step"]
        directions = self._directions(
            inputs, units, group, t, None, lambda i: (self.state[params[units[i].index]], ""))
        for p, direction in zip(params, directions, strict=True):
            self._apply(p, self.state[p], direction, group)

    def _flat_step(self, group: dict[str, Any], layout: GroupLayout) -> None:
        """ZeRO-1/2: element-wise states on this rank's flat partition, blocks on whole matrices."""
        (flat,) = group["params"]
        if flat.grad is None:
            return
        state = self.state[flat]
        graft = self._graft(flat, state, group)
        grads = gather_flat(flat.grad, layout, self.dp_group)
        grafts = gather_flat(graft, layout, self.dp_group)
        inputs = [torch.stack(pair) for pair in zip(grads, grafts, strict=True)]
        pieces = self._directions(inputs, layout.units, group, state["step"], self.dp_group,
                                  lambda i: (state, owned_key(layout.units[i].index, "")))
        direction = torch.zeros_like(flat)
        for unit, piece in zip(layout.units, pieces, strict=True):
            matrix = layout.matrices[unit.index]
            if matrix.fragment is not None:
                start, lp_start, numel = matrix.fragment
                direction.narrow(0, start, numel).copy_(piece.reshape(-1).narrow(0, lp_start, numel))
        self._apply(flat, state, direction, group)

    def _directions(
        self, inputs: list[torch.Tensor], units: list[Unit], group: dict[str, Any], t: int,
        dp_group: Any, store: Any,
    ) -> list[torch.Tensor]:
        """Every unit's direction (this rank's piece), each computed once by its owner.

        ``inputs`` stack (gradient, grafting direction) per parameter; ``store(i)`` gives the state
        dict and key prefix that hold unit ``i``'s blocks (on its owner).
        """
        def run(i: int, logical: torch.Tensor) -> torch.Tensor:
            state, prefix = store(i)
            return self._precondition(logical[0], logical[1], state, prefix, group, t)

        return run_units(inputs, units, self._workers(units, group, dp_group), run,
                         dtype=inputs[0].dtype, tp_group=self.tp_group, dp_group=dp_group)

    def _workers(self, units: list[Unit], group: dict[str, Any], dp_group: Any) -> list[int]:
        """Each unit's owner among the DP x TP ranks (``run_units``), balanced by ``shampoo_cost``."""
        costs = [shampoo_cost(u.shape, group["max_preconditioner_dim"], group["precondition_frequency"])
                 for u in units]
        return balance(costs, group_size(dp_group) * group_size(self.tp_group))

    def load_matrix_states(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        """Put whole-matrix states (a universal checkpoint's blocks, ``{module parameter name:
        {key: tensor}}``) on each matrix's owner rank, as ``step`` would have left them."""
        for group in self.param_groups:
            layout = self.layouts.get(group.get("name"))
            if group["rule"] != "matrix" or layout is None:
                continue
            dp_group = self.dp_group if layout.flat else None
            me = 0 if group_size(dp_group) == 1 else dist.get_rank(dp_group)
            me = me * group_size(self.tp_group) + (dist.get_rank(self.tp_group) if self.tp_group else 0)
            for unit, worker in zip(layout.units, self._workers(layout.units, group, dp_group), strict=True):
                name = layout.matrices[unit.index].name
                if worker != me or name not in states:
                    continue
                if layout.flat:
                    state, prefix = self.state[group["params"][0]], owned_key(unit.index, "")
                else:
                    state, prefix = self.state[group["params"][unit.index]], ""
                for key, value in states[name].items():
                    state[prefix + key] = value.to(group["params"][0].dtype).clone()

    def _graft(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> torch.Tensor:
        """Element-wise: count the step, update Adam grafting's second moment; the grafting direction."""
        if not state:
            state["step"] = 0
            state["momentum_buffer"] = torch.zeros_like(p)
            if group["grafting"] == "adam":
                state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        g = p.grad
        if group["grafting"] != "adam":
            return g
        t, adam_beta2 = state["step"], group["betas"][1]
        state["exp_avg_sq"].mul_(adam_beta2).addcmul_(g, g, value=1 - adam_beta2)
        denom = (state["exp_avg_sq"] / (1 - adam_beta2**t)).sqrt_().add_(group["eps"])
        return g / denom

    def _precondition(
        self, g: torch.Tensor, graft: torch.Tensor, state: dict[str, Any], prefix: str,
        group: dict[str, Any], t: int,
    ) -> torch.Tensor:
        """One logical matrix: update its block statistics (``state[prefix + "L_<b>"]``, ...),
        refresh the inverse roots when due; the grafted preconditioned direction."""
        blocks = block_slices((g.size(0), g.size(1)), group["max_preconditioner_dim"])
        if f"{prefix}L_0" not in state:
            for b, (rows, cols) in enumerate(blocks):
                for key, n in (("L", rows.stop - rows.start), ("R", cols.stop - cols.start)):
                    state[f"{prefix}{key}_{b}"] = g.new_zeros(n, n)
                    state[f"{prefix}{key}_inv_{b}"] = torch.eye(n, dtype=g.dtype, device=g.device)
        beta2 = group["beta2"]
        start = group["start_preconditioning_step"]
        precondition = t >= start
        refresh = precondition and (t - start) % group["precondition_frequency"] == 0
        direction = graft.clone() if precondition else graft
        for b, (rows, cols) in enumerate(blocks):
            g_b = g[rows, cols]
            left, right = state[f"{prefix}L_{b}"], state[f"{prefix}R_{b}"]
            if beta2 == 1.0:
                left.addmm_(g_b, g_b.T)
                right.addmm_(g_b.T, g_b)
            else:
                left.mul_(beta2).addmm_(g_b, g_b.T, alpha=1 - beta2)
                right.mul_(beta2).addmm_(g_b.T, g_b, alpha=1 - beta2)
            if refresh:
                state[f"{prefix}L_inv_{b}"].copy_(inverse_fourth_root(left, group["epsilon"]))
                state[f"{prefix}R_inv_{b}"].copy_(inverse_fourth_root(right, group["epsilon"]))
            if precondition:
                pre = state[f"{prefix}L_inv_{b}"] @ g_b @ state[f"{prefix}R_inv_{b}"]
                if group["grafting"] != "none":
                    # A zero block stays zero (clamp avoids 0/0 without a device sync).
                    pre = pre * (graft[rows, cols].norm() / pre.norm().clamp(min=1e-30))
                direction[rows, cols] = pre
        return direction

    def _apply(self, p: torch.Tensor, state: dict[str, Any], direction: torch.Tensor,
               group: dict[str, Any]) -> None:
        """Element-wise: momentum on the direction, decoupled weight decay, the step."""
        buf = state["momentum_buffer"]
        momentum = group["momentum"]
        if momentum > 0:
            buf.mul_(momentum).add_(direction, alpha=1 - momentum)
        else:
            buf.copy_(direction)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(buf, alpha=-group["lr"])

    def _check_unbound(self, params: list[torch.Tensor]) -> None:
        for p in params:
            if p.ndim != 2:
                raise RuntimeError(
                    f"dshampoo: a matrix-group tensor has shape {tuple(p.shape)}; Shampoo needs "
                    "whole 2-D matrices and the optimizer was not bound to the model's layout "
                    "(ZeRO-1/2 and DeepSpeed's bf16/fp16 wrappers hand it flat 1-D shards): build "
                    "it through TrainEngine (which binds it), or use --zero-stage 0"
                )
        if group_size(self.tp_group) > 1:
            raise RuntimeError(
                "dshampoo: tensor-parallel shards need the model's layout (DShampoo.bind, done by "
                "TrainEngine); Shampoo blocks of a shard are not the matrix's"
            )
