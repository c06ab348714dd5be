"""Muon on matrices that no single tensor holds: tensor-parallel shards and ZeRO-1/2 partitions.

Newton-Schulz must see the *logical* matrix, the one a single process would hold. The gathering
over TP, the owner per unit among the TP x DP ranks and the write-back into ZeRO-1/2 partitions
are ``matrix_distributed.py`` (shared with dshampoo); here are Muon's parts:

- **Units.** By default a parameter is one unit; with ``--muon-split-fused`` the fused QKV weight
  is three (Q, K, V: per KV group the shard holds ``group`` query heads, then one key and one
  value head) and the fused SwiGLU fc1 two (gate, up) (``fused_parts``).
- **Owners.** ``muon.assign_owners`` over the logical shapes (greedy by ``ns_cost``): only the
  owner runs a unit's Newton-Schulz; the others receive their chunk.
- **ZeRO-1/2.** Momentum lives on the flat partition, so it is sharded like DeepSpeed's own
  states; the directions are gathered over DP (``gather_flat``) and each rank adds the fragment
  of every update that lies in its partition.

The update of every element equals the single-process one up to fp32 summation order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from megatron.optimizer.matrix_distributed import (
    GroupLayout,
    MatrixLayout,
    Unit,
    bind_layouts,
    gather_flat,
    group_size,
    make_units,
    run_units,
    unit_update,
    whole_units,
)
from megatron.optimizer.muon_options import assign_owners

Orthogonalize = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["GroupLayout", "MatrixLayout", "Unit", "bind", "fused_parts", "gather_flat", "group_size",
           "make_units", "orthogonalize_units", "unit_update", "whole_units"]


def orthogonalize_units(
    directions: list[torch.Tensor], units: list[Unit], *, steps: int, orth: Orthogonalize,
    dtype: torch.dtype, tp_group: Any, dp_group: Any,
) -> list[torch.Tensor]:
    """Every unit's orthogonalized piece on this rank, each Newton-Schulz run once overall.

    Args:
        directions: The group's local (TP shard) directions, by parameter.
        units: ``make_units`` of the group.
        steps: Newton-Schulz iterations (for the cost model).
        orth: ``orth(logical matrix) -> orthogonalized`` in ``dtype``.
        dtype: The Newton-Schulz dtype (buffers that receive results).
        tp_group, dp_group: Process groups, or None for size 1.
    """
    workers = assign_owners([u.shape for u in units], group_size(dp_group) * group_size(tp_group), steps)
    return run_units(directions, units, workers, lambda _, m: orth(m), dtype=dtype,
                     tp_group=tp_group, dp_group=dp_group)


def fused_parts(name: str, rows: int, spec: Any, tp: int) -> list[torch.Tensor] | None:
    """Row indices of Q, K, V in a QKV shard (per KV group: ``group`` query heads, a key and a
    value head) or of gate and up in a SwiGLU fc1 shard; None for an unfused matrix."""
    if name.endswith("query_key_value.weight"):
        group = spec.num_attention_heads // spec.num_key_value_heads
        idx = torch.arange(rows).view(spec.num_key_value_heads // tp, group + 2, spec.head_dim)
        return [idx[:, :group].reshape(-1), idx[:, group].reshape(-1), idx[:, group + 1].reshape(-1)]
    if spec.swiglu and name.endswith("dense_h_to_4h.weight"):
        return list(torch.arange(rows).chunk(2))
    return None


def bind(host: Any, split_fused: bool) -> None:
    """Tell a built Muon where its matrices live (``OptimizerSpec.after_initialize``).

    ``host`` is a ``host.StepHost`` after ``deepspeed.initialize``: ZeRO-1/2 partitions and the
    parameters' ``_hp_mapping`` exist by then.
    """
    layouts, tp_group = bind_layouts(host, "muon", fused_parts if split_fused else None)
    host.optimizer.bind(layouts, tp_group)
