"""Elastic weight consolidation for continual pretraining, with TiC-LM's estimator
(apple/ml-tic-lm open_lm.patch; Kirkpatrick et al. 2017, arXiv 1612.00796).

At the start of a stage (only then) the anchor ``theta*`` is the loaded weights and

    F = sum over N global batches b of  g_b ** 2,   g_b = DP-averaged grad of the mean LM loss of b

(the square of a batch-*mean* gradient, summed: not the per-sample Fisher; its values are tiny,
hence TiC-LM's lambda = 1e7; do not reuse a lambda tuned for another estimator). Every step adds
the gradient of ``(lambda / N) * sum 1/2 F (theta - theta*)^2``, i.e. ``(lambda / N) F (theta -
theta*)``, to the gradient before clipping. N divides once: F is a sum.

How the penalty reaches the gradient: as a term of every micro-batch's loss. DeepSpeed divides
each micro-batch's loss by the accumulation steps and sums their gradients, so the penalty's
gradient arrives exactly once per step at any accumulation pattern, is scaled with fp16's loss
scale, and is clipped with the LM gradient.

Where ``theta*`` and ``F`` live (fp32): at ZeRO-0 every data-parallel rank holds them for its
whole (TP-local) parameters; at ZeRO-1/2 (and DeepSpeed's flat bf16 optimizer) each rank holds
only the elements of its fp32 master partition (``optimizer.placement``), and its penalty term
is multiplied by the DP size: the DP mean of the gradients then leaves exactly the owner's term
on each element. ZeRO-3 and pipeline parallelism are refused (``config.regularize``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron.model.gpt import masked_mean
from megatron.optimizer.placement import optimizer_slots
from megatron.trainer.protocols import EngineView


@dataclass(frozen=True, slots=True)
class Shard:
    """The elements ``[start, start + numel)`` of a flattened parameter this rank anchors.

    Attributes:
        name: The module parameter.
        start: First flattened element.
        numel: Elements.
        scale: Factor on the penalty term (the DP size for a partition owner, else 1).
    """

    name: str
    start: int
    numel: int
    scale: int


def owned_shards(train_engine: EngineView) -> list[Shard]:
    """What this rank anchors: whole parameters at ZeRO-0, its partition slices at ZeRO-1/2."""
    slots = list(optimizer_slots(train_engine))
    if any(s.flat for s in slots):
        dp = parallel_state.get_data_parallel_world_size()
        return [Shard(s.name, s.lp_start, s.numel, dp) for s in slots if s.numel > 0]
    return [Shard(n, 0, p.numel(), 1) for n, p in train_engine.module.named_parameters()
            if p.requires_grad]


def _flat_slice(param: torch.Tensor, shard: Shard) -> torch.Tensor:
    return param.reshape(-1).narrow(0, shard.start, shard.numel)


def fisher_sum(module: torch.nn.Module, global_batches: Iterable[Sequence[object]]) -> dict[str, torch.Tensor]:
    """``sum_b (DP-mean grad of the mean LM loss of global batch b) ** 2`` per parameter (fp32).

    Args:
        module: The model (its parameters' ``.grad`` are not touched).
        global_batches: Per global batch, this rank's micro-batches (``Batch``).
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    total = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params]
    group = parallel_state.get_data_parallel_group()
    dp = dist.get_world_size(group)
    for batches in global_batches:
        loss = sum(masked_mean(module(b.tokens, b.labels), b.loss_mask) for b in batches) / len(batches)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, g in zip(total, grads, strict=True):
            if g is None:
                continue
            g = g.float()
            if dp > 1:
                dist.all_reduce(g, group=group)
                g = g / dp
            acc.add_(g.square())
    return {n: t for (n, _), t in zip(named, total, strict=True)}


class EWCAnchor:
    """``theta*`` and ``F`` of this rank's shards and the penalty they define.

    Args:
        shards: This rank's shards (``owned_shards``).
        anchor: ``theta*`` per shard (fp32, flat).
        fisher: ``F`` per shard (fp32, flat).
        weight: lambda.
        num_iterations: N of ``lambda / N``.
    """

    def __init__(self, shards: list[Shard], anchor: list[torch.Tensor], fisher: list[torch.Tensor],
                 weight: float, num_iterations: int):
        self.shards = shards
        self.anchor = anchor
        self.fisher = fisher
        self.coefficient = weight / num_iterations
        self.weight = weight
        self.num_iterations = num_iterations

    @classmethod
    def capture(cls, module: torch.nn.Module, shards: list[Shard], fisher: dict[str, torch.Tensor],
                weight: float, num_iterations: int) -> EWCAnchor:
        """Anchor on ``module``'s current weights, keeping this rank's slices of ``fisher``."""
        params = dict(module.named_parameters())
        anchor = [_flat_slice(params[s.name].detach(), s).float().clone() for s in shards]
        sliced = [_flat_slice(fisher[s.name], s).clone() for s in shards]
        return cls(shards, anchor, sliced, weight, num_iterations)

    def penalty(self, module: torch.nn.Module) -> torch.Tensor:
        """This rank's term ``sum_shards scale * (lambda/N) * sum 1/2 F (theta - theta*)^2``
        (differentiable in the module's parameters)."""
        params = dict(module.named_parameters())
        total = None
        for shard, anchor, fisher in zip(self.shards, self.anchor, self.fisher, strict=True):
            delta = _flat_slice(params[shard.name], shard).float() - anchor
            term = (fisher * delta.square()).sum() * (0.5 * self.coefficient * shard.scale)
            total = term if total is None else total + term
        if total is None:  # a rank that owns no elements still joins the graph
            total = next(iter(params.values())).sum() * 0.0
        return total

    def state_dict(self) -> dict:
        """Everything needed to restore the anchor bit for bit."""
        return {"shards": [(s.name, s.start, s.numel, s.scale) for s in self.shards],
                "anchor": self.anchor, "fisher": self.fisher, "weight": self.weight,
                "num_iterations": self.num_iterations}

    @classmethod
    def from_state_dict(cls, state: dict) -> EWCAnchor:
        """The inverse of ``state_dict``."""
        shards = [Shard(*s) for s in state["shards"]]
        return cls(shards, state["anchor"], state["fisher"], state["weight"], state["num_iterations"])
