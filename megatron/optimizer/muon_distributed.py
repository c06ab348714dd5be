"""Muon on matrices that no single tensor holds: tensor-parallel shards and ZeRO-1/2 partitions.

Newton-Schulz must see the *logical* matrix, the one a single process would hold. Three layers
of storage sit between it and what the optimizer is handed:

- **Units.** One unit is one matrix to orthogonalize. By default a parameter is one unit; with
  ``--muon-split-fused`` the fused QKV weight is three (Q, K, V: per KV group the shard holds
  ``group`` query heads, then one key and one value head) and the fused SwiGLU fc1 two (gate, up).
- **Tensor parallelism.** A unit's local piece is a shard of the logical matrix along the
  parameter's split dimension (rows of column-parallel, columns of row-parallel weights). The
  unit's owner TP rank gathers the pieces (``all_gather`` over the TP group), concatenates them,
  orthogonalizes and broadcasts; each TP rank keeps its chunk. Concatenating the stride-2 fc1
  shards ``[gate_r; up_r]`` gives a row permutation of ``[gate; up]``, and Newton-Schulz commutes
  with row permutations (``NS(P X) = P NS(X)``), so no reordering is needed.
- **Data parallelism.** Every unit has one owner among the ``dp x tp`` ranks, chosen by
  ``muon.assign_owners`` over the logical shapes (greedy by ``ns_cost``): only that rank runs its
  Newton-Schulz; DP replicas receive the chunk by a broadcast over the DP group.
- **ZeRO-1/2.** DeepSpeed hands the optimizer one flat fp32 partition of the matrix group per DP
  rank; momentum lives on it, so it is sharded like DeepSpeed's own states. The directions are
  ``all_gather`` ed over DP into the unpartitioned flat buffer, where every parameter sits at a
  fixed offset (exchanged once, from DeepSpeed's ``_hp_mapping`` fragments, in ``bind``); after
  the units are orthogonalized as above, each rank adds the fragment of every update that lies in
  its partition.

Every rank runs the same collectives in the same order (all ranks know every unit). The update of
every element equals the single-process one up to fp32 summation order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from megatron.optimizer.muon import assign_owners

Orthogonalize = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class Unit:
    """One matrix Newton-Schulz runs on.

    Attributes:
        index: Its parameter's position in the group.
        rows: Rows of the (local) parameter it takes, or None for all of it.
        tp_dim: Dimension the logical matrix is split along over TP ranks, or None (replicated).
        shape: The logical (single-process) shape.
    """

    index: int
    rows: torch.Tensor | None
    tp_dim: int | None
    shape: tuple[int, int]


@dataclass(slots=True)
class MatrixLayout:
    """One parameter of a matrix group.

    Attributes:
        name: Module parameter name.
        shape: Local (TP shard) shape.
        tp_dim: Split dimension over TP ranks, or None.
        parts: Row indices of the fused sub-matrices (``--muon-split-fused``), or None.
        offset: Flat groups: first element in the unpartitioned flat buffer.
        fragment: Flat groups: ``(partition start, parameter start, numel)`` on this rank, or None.
    """

    name: str
    shape: tuple[int, int]
    tp_dim: int | None
    parts: list[torch.Tensor] | None = None
    offset: int = -1
    fragment: tuple[int, int, int] | None = None


@dataclass(slots=True)
class GroupLayout:
    """Where a matrix group's parameters live (``bind``); ``flat`` for a ZeRO-1/2 partition."""

    matrices: list[MatrixLayout]
    flat: bool = False
    partition_numel: int = 0
    units: list[Unit] = field(default_factory=list)


def group_size(group: Any) -> int:
    """World size of a process group; 1 for None."""
    return 1 if group is None else dist.get_world_size(group)


def make_units(matrices: list[MatrixLayout], tp: int) -> list[Unit]:
    """The units of a group's matrices (module docstring), in a fixed order."""
    units = []
    for i, m in enumerate(matrices):
        for rows in m.parts or [None]:
            local = (m.shape[0] if rows is None else rows.numel(), m.shape[1])
            shape = list(local)
            if m.tp_dim is not None:
                shape[m.tp_dim] *= tp
            units.append(Unit(index=i, rows=rows, tp_dim=m.tp_dim, shape=(shape[0], shape[1])))
    return units


def whole_units(shapes: list[tuple[int, int]]) -> list[Unit]:
    """One unit per parameter, no tensor parallelism (an unbound optimizer)."""
    return [Unit(index=i, rows=None, tp_dim=None, shape=s) for i, s in enumerate(shapes)]


def _piece(directions: list[torch.Tensor], unit: Unit) -> torch.Tensor:
    d = directions[unit.index]
    return d if unit.rows is None else d.index_select(0, unit.rows)


def _tp_orthogonalize(
    pieces: list[torch.Tensor], units: list[Unit], tp_owners: list[int], orth: Orthogonalize,
    dtype: torch.dtype, tp_group: Any,
) -> list[torch.Tensor]:
    """Each unit's orthogonalized logical matrix, cut back to this TP rank's piece."""
    tp = group_size(tp_group)
    me = 0 if tp == 1 else dist.get_rank(tp_group)
    if tp == 1:
        return [orth(p).contiguous() for p in pieces]
    gathered: list[list[torch.Tensor] | None] = []
    works = []
    for piece, unit in zip(pieces, units, strict=True):
        if unit.tp_dim is None:
            gathered.append(None)
            continue
        parts = [torch.empty_like(piece) for _ in range(tp)]
        gathered.append(parts)
        works.append(dist.all_gather(parts, piece.contiguous(), group=tp_group, async_op=True))
    for work in works:
        work.wait()
    results, works = [], []
    for piece, unit, owner, parts in zip(pieces, units, tp_owners, gathered, strict=True):
        if owner == me:
            logical = piece if parts is None else torch.cat(parts, dim=unit.tp_dim)
            result = orth(logical).contiguous()
        else:
            result = torch.empty(unit.shape, dtype=dtype, device=piece.device)
        results.append(result)
        src = dist.get_global_rank(tp_group, owner)
        works.append(dist.broadcast(result, src=src, group=tp_group, async_op=True))
    for work in works:
        work.wait()
    return [r if u.tp_dim is None else r.chunk(tp, dim=u.tp_dim)[me].contiguous()
            for r, u in zip(results, units, strict=True)]


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
    tp, dp = group_size(tp_group), group_size(dp_group)
    workers = assign_owners([u.shape for u in units], dp * tp, steps)
    my_dp = 0 if dp == 1 else dist.get_rank(dp_group)
    mine = [i for i, w in enumerate(workers) if w // tp == my_dp]
    done = _tp_orthogonalize(
        [_piece(directions, units[i]) for i in mine], [units[i] for i in mine],
        [workers[i] % tp for i in mine], orth, dtype, tp_group,
    )
    pieces: list[torch.Tensor | None] = [None] * len(units)
    for i, result in zip(mine, done, strict=True):
        pieces[i] = result
    if dp == 1:
        return pieces
    works = []
    for i, unit in enumerate(units):
        if pieces[i] is None:
            d = directions[unit.index]
            rows = d.size(0) if unit.rows is None else unit.rows.numel()
            pieces[i] = torch.empty((rows, d.size(1)), dtype=dtype, device=d.device)
        src = dist.get_global_rank(dp_group, workers[i] // tp)
        works.append(dist.broadcast(pieces[i], src=src, group=dp_group, async_op=True))
    for work in works:
        work.wait()
    return pieces


def unit_update(shape: tuple[int, ...], unit: Unit, piece: torch.Tensor) -> torch.Tensor:
    """``piece`` placed in a parameter-shaped tensor (zeros outside a split unit's rows)."""
    if unit.rows is None:
        return piece
    full = piece.new_zeros(shape)
    return full.index_copy_(0, unit.rows, piece)


def gather_flat(direction: torch.Tensor, layout: GroupLayout, dp_group: Any) -> list[torch.Tensor]:
    """Every matrix's full (TP shard) direction from the DP ranks' flat partitions."""
    dp = group_size(dp_group)
    if dp == 1:
        full = direction
    else:
        parts = [torch.empty_like(direction) for _ in range(dp)]
        dist.all_gather(parts, direction.contiguous(), group=dp_group)
        full = torch.cat(parts)
    out = []
    for m in layout.matrices:
        numel = m.shape[0] * m.shape[1]
        out.append(full.narrow(0, m.offset, numel).view(m.shape))
    return out


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


def _place_flat(matrices: list[MatrixLayout], named: dict[str, Any], group_index: int,
                partition_numel: int, dp_group: Any) -> None:
    """Each matrix's offset in the unpartitioned flat buffer and its fragment on this rank."""
    me = 0 if group_size(dp_group) == 1 else dist.get_rank(dp_group)
    offsets = {}
    for m in matrices:
        fragment = getattr(named[m.name], "_hp_mapping", None)
        if fragment is None:  # no element of it in this rank's partition
            continue
        if fragment.param_group_index != group_index:
            raise RuntimeError(f"muon: {m.name} is in DeepSpeed's group {fragment.param_group_index}, "
                               f"expected {group_index}")
        hp, lp = fragment.hp_fragment_address.start, fragment.lp_fragment_address.start
        m.fragment = (hp, lp, fragment.hp_fragment_address.numel)
        offsets[m.name] = me * partition_numel + hp - lp
    every: list[dict[str, int]] = [offsets]
    if group_size(dp_group) > 1:
        every = [{} for _ in range(group_size(dp_group))]
        dist.all_gather_object(every, offsets, group=dp_group)
    merged: dict[str, int] = {}
    for rank_offsets in every:
        for name, offset in rank_offsets.items():
            if merged.setdefault(name, offset) != offset:
                raise RuntimeError(f"muon: DP ranks disagree where {name} starts in the flat buffer "
                                   f"({merged[name]} vs {offset}); DeepSpeed's layout is not contiguous")
    for m in matrices:
        if m.name not in merged:
            raise RuntimeError(f"muon: no DP rank holds a fragment of {m.name}")
        m.offset = merged[m.name]


def bind(host: Any, split_fused: bool) -> None:
    """Tell a built Muon where its matrices live (``OptimizerSpec.after_initialize``).

    ``host`` is a ``host.StepHost`` after ``deepspeed.initialize``: ZeRO-1/2 partitions and the
    parameters' ``_hp_mapping`` exist by then.
    """
    from megatron.core import parallel_state

    from megatron.checkpointing.layout import canonical_name, tp_layout

    optimizer, spec, tp = host.optimizer, host.plan.model, host.plan.tp
    tp_group = parallel_state.get_tensor_model_parallel_group() if tp > 1 else None
    named = dict(host.module.named_parameters())
    layouts = {}
    for index, (group, names) in enumerate(zip(optimizer.param_groups, host.param_names, strict=True)):
        if group["rule"] != "matrix":
            continue
        matrices = []
        for name in names:
            layout = tp_layout(canonical_name(name, spec.num_layers), spec)
            shape = tuple(named[name].shape)
            matrices.append(MatrixLayout(
                name=name, shape=shape, tp_dim=None if layout == "replicated" else int(layout == "dim1"),
                parts=fused_parts(name, shape[0], spec, tp) if split_fused else None,
            ))
        held = group["params"][0]
        flat = held.ndim == 1
        if flat:
            _place_flat(matrices, named, index, held.numel(), optimizer.dp_group)
        layouts[group["name"]] = GroupLayout(matrices=matrices, flat=flat, partition_numel=held.numel(),
                                             units=make_units(matrices, tp))
    optimizer.bind(layouts, tp_group)
