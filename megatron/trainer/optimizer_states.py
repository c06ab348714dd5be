"""Optimizer-state metrics (``--log-optimizer-states-to-tensorboard``): for every tensor state
key (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ``hessian``, ...) the L2 norm, the
largest and the mean ``|x|`` over the whole model, the same numbers at any TP/PP/DP/ZeRO layout.
An optimizer can add derived per-element states (``OptimizerSpec.derived_states``): Sophia's
``unclipped`` is 1 where its update is not clipped, so ``unclipped/mean_abs`` is the fraction
of unclipped coordinates, the quantity its paper tunes rho by.

Where the state lives decides what a rank counts, so that summed over every rank each element of
the model's state is counted exactly once:
- ZeRO-0: every DP rank holds the same full state: only DP rank 0 counts.
- ZeRO-1/2 (and DeepSpeed's flat bf16 optimizer): each DP rank holds one slice of a flat fp32
  partition per group (``placement.optimizer_slots`` finds a parameter's slice).
- TP: split parameters count on every TP rank (each holds a shard); replicated ones (norms,
  row-parallel biases) only on TP rank 0.
- PP with tied embeddings: the last stage's copy of the word embedding is not counted.
ZeRO-3 partitions parameters themselves and is refused in the plan.

One ``all_gather_object`` (the union of state keys) and two ``all_reduce`` s per call, over the
world: every rank must call it at the same iterations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from megatron.checkpointing.layout import canonical_name, tp_layout
from megatron.optimizer.placement import optimizer_slots
from megatron.trainer.protocols import EngineView


def _counts(name: str, train_engine: EngineView) -> bool:
    """Whether this rank counts parameter ``name`` (module docstring)."""
    ctx, spec = train_engine.ctx, train_engine.plan.model
    canonical = canonical_name(name, spec.num_layers)
    if ctx.tp_rank != 0 and tp_layout(canonical, spec) == "replicated":
        return False
    return not (name.startswith("tied_modules.") and not ctx.is_first_stage)


STATS = ("sumsq", "abs_sum", "count", "max_abs")


def _local_stats(train_engine: EngineView) -> dict[str, dict[str, float]]:
    """This rank's {key: {sum of squares, sum of |x|, element count, max |x|}}."""
    optimizer = train_engine.optimizer
    derive = train_engine.optimizer_spec.derived_states
    dp_first = train_engine.ctx.zero_dp_rank == 0  # ZeRO-0: every DP (and SP) rank holds the same state
    stats: dict[str, dict[str, float]] = {}
    held: dict[int, dict[str, torch.Tensor]] = {}  # per optimizer tensor (a flat one serves many)

    def add(key: str, value: torch.Tensor, counted: bool) -> None:
        value = value.detach().float()
        entry = stats.setdefault(key, dict.fromkeys(STATS, 0.0))
        if value.numel():
            entry["max_abs"] = max(entry["max_abs"], float(value.abs().max()))
        if counted:
            entry["sumsq"] += float(value.square().sum())
            entry["abs_sum"] += float(value.abs().sum())
            entry["count"] += value.numel()

    for slot in optimizer_slots(train_engine):
        if id(slot.tensor) not in held:
            state = {k: v for k, v in optimizer.state.get(slot.tensor, {}).items() if torch.is_tensor(v)}
            if derive is not None and state:
                state.update(derive(state, slot.group))
            held[id(slot.tensor)] = state
        counted = (slot.flat or dp_first) and _counts(slot.name, train_engine)
        for key, value in held[id(slot.tensor)].items():
            if slot.flat and value.shape == slot.tensor.shape:
                add(key, slot.of_state(value), counted)
            elif not slot.flat and value.ndim > 0:
                # Tensors of the parameter's shape, or Shampoo's blocks; not scalar step counters.
                add(key, value, counted)
    return stats


def optimizer_state_stats(train_engine: EngineView) -> dict[str, float]:
    """``{"<key>/l2", "<key>/max_abs", "<key>/mean_abs": ...}`` over the whole model (collective)."""
    stats = _local_stats(train_engine)
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, sorted(stats))
        keys = sorted({k for ks in gathered for k in ks})
    else:
        keys = sorted(stats)
    if not keys:
        return {}
    empty = dict.fromkeys(STATS, 0.0)
    table = torch.tensor([[stats.get(k, empty)[s] for s in STATS] for k in keys],
                         dtype=torch.float64, device=train_engine.ctx.device)
    totals, peaks = table[:, :3].contiguous(), table[:, 3].contiguous()
    if distributed:
        dist.all_reduce(totals)
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
    out = {}
    for key, (sumsq, abs_sum, count), peak in zip(keys, totals.tolist(), peaks.tolist(), strict=True):
        out[f"{key}/l2"] = math.sqrt(sumsq)
        out[f"{key}/max_abs"] = peak
        out[f"{key}/mean_abs"] = abs_sum / max(count, 1.0)
    return out
