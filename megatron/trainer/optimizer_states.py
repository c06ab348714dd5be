"""Optimizer-state metrics (``--log-optimizer-states-to-tensorboard``): for every tensor state
key (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ``hessian``, ...) the L2 norm and the
largest ``|x|`` over the whole model, the same numbers at any TP/PP/DP/ZeRO layout.

Where the state lives decides what a rank counts, so that summed over every rank each element of
the model's state is counted exactly once:
- ZeRO-0: every DP rank holds the same full state: only DP rank 0 counts.
- ZeRO-1/2 (and DeepSpeed's flat bf16 optimizer): each DP rank holds one slice of a flat fp32
  partition per group; a module parameter's slice is found through DeepSpeed's ``_hp_mapping``.
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


def _counts(name: str, train_engine: Any) -> bool:
    """Whether this rank counts parameter ``name`` (module docstring)."""
    ctx, spec = train_engine.ctx, train_engine.plan.model
    canonical = canonical_name(name, spec.num_layers)
    if ctx.tp_rank != 0 and tp_layout(canonical, spec) == "replicated":
        return False
    return not (name.startswith("tied_modules.") and not ctx.is_first_stage)


def _local_stats(train_engine: Any) -> tuple[dict[str, float], dict[str, float]]:
    """This rank's (sum of squares, max |x|) per state key."""
    optimizer = train_engine.optimizer
    sums: dict[str, float] = {}
    maxes: dict[str, float] = {}

    def add(key: str, value: torch.Tensor, counted: bool) -> None:
        value = value.detach().float()
        maxes[key] = max(maxes.get(key, 0.0), float(value.abs().max()) if value.numel() else 0.0)
        sums[key] = sums.get(key, 0.0) + (float(value.square().sum()) if counted else 0.0)

    named = list(train_engine.module.named_parameters())
    if any(hasattr(p, "_hp_mapping") for _, p in named):
        for name, p in named:
            fragment = p._hp_mapping
            if fragment is None:
                continue
            flat = optimizer.param_groups[fragment.param_group_index]["params"][0]
            address = fragment.hp_fragment_address
            for key, value in optimizer.state.get(flat, {}).items():
                if torch.is_tensor(value) and value.shape == flat.shape:
                    add(key, value.narrow(0, address.start, address.numel), _counts(name, train_engine))
        return sums, maxes
    dp_first = train_engine.ctx.dp_rank == 0  # ZeRO-0: every DP rank holds the same state
    for group, names in zip(optimizer.param_groups, train_engine.param_names, strict=True):
        for p, name in zip(group["params"], names, strict=True):
            for key, value in optimizer.state.get(p, {}).items():
                # Tensors of the parameter's shape, or Shampoo's blocks; not scalar step counters.
                if torch.is_tensor(value) and value.ndim > 0:
                    add(key, value, dp_first and _counts(name, train_engine))
    return sums, maxes


def optimizer_state_stats(train_engine: Any) -> dict[str, float]:
    """``{"<key>/l2": ..., "<key>/max_abs": ...}`` over the whole model (collective)."""
    sums, maxes = _local_stats(train_engine)
    if not (dist.is_available() and dist.is_initialized()):
        keys = sorted(sums)
    else:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, sorted(sums))
        keys = sorted({k for ks in gathered for k in ks})
    if not keys:
        return {}
    device = train_engine.ctx.device
    totals = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=device)
    peaks = torch.tensor([maxes.get(k, 0.0) for k in keys], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
    out = {}
    for key, total, peak in zip(keys, totals.tolist(), peaks.tolist(), strict=True):
        out[f"{key}/l2"] = math.sqrt(total)
        out[f"{key}/max_abs"] = peak
    return out
