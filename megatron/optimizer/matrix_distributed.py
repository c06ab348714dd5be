"""Matrix updates on matrices that no single tensor holds: tensor-parallel shards and ZeRO-1/2
partitions. Shared by Muon (``muon_distributed.py``) and dshampoo (``shampoo_torch.py``).

A matrix optimizer's work (Newton-Schulz, Shampoo's preconditioners) must see the *logical*
matrix, the one a single process would hold. Three layers of storage sit between it and what the
optimizer is handed:

- **Units.** One unit is one matrix to work on: a parameter, or (Muon's ``--muon-split-fused``)
  rows of one (Q, K, V of a fused QKV weight).
- **Tensor parallelism.** A unit's local piece is a shard of the logical matrix along the
  parameter's split dimension (rows of column-parallel, columns of row-parallel weights). The
  pieces are ``all_gather`` ed over the TP group and merged in the single-process order (the
  stride-2 SwiGLU fc1 shards ``[gate_r; up_r]`` are put back as ``[gate; up]``), the unit's
  owner TP rank runs the work and broadcasts the result; each TP rank keeps its chunk.
- **Data parallelism.** Every unit has one owner among the ``dp x tp`` ranks (``run_units``'s
  ``workers``, balanced by cost with ``owners.balance``): only that rank runs the work; DP
  replicas receive their chunk by a broadcast over the DP group.
- **ZeRO-1/2.** DeepSpeed hands the optimizer one flat fp32 partition of the matrix group per DP
  rank. ``gather_flat`` ``all_gather`` s a partition-shaped tensor over DP into the unpartitioned
  flat buffer, where every parameter sits at a fixed offset (exchanged once, from DeepSpeed's
  ``_hp_mapping`` fragments, by ``place_flat``); each rank then takes the fragment of every
  result that lies in its partition (``MatrixLayout.fragment``).

The inputs handed to ``run_units`` may carry leading dimensions (dshampoo stacks the gradient
and its grafting direction): the matrix is always the last two dimensions. Every rank runs the
same collectives in the same order (all ranks know every unit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from megatron.checkpointing.layout import canonical_name, tp_layout

UnitFn = Callable[[int, torch.Tensor], torch.Tensor]
"""``fn(unit position, logical input) -> logical result`` (a 2-D matrix of the unit's shape)."""


@dataclass(frozen=True, slots=True)
class Unit:
    """One matrix the optimizer works on.

    Attributes:
        index: Its parameter's position in the group.
        rows: Rows of the (local) parameter it takes, or None for all of it.
        tp_dim: Dimension the logical matrix is split along over TP ranks, or None (replicated).
        shape: The logical (single-process) shape.
        interleaved: The stride-2 ``[gate_r; up_r]`` TP split of a fused SwiGLU fc1.
    """

    index: int
    rows: torch.Tensor | None
    tp_dim: int | None
    shape: tuple[int, int]
    interleaved: bool = False


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
        interleaved: TP split with stride 2 (the fused SwiGLU fc1).
    """

    name: str
    shape: tuple[int, int]
    tp_dim: int | None
    parts: list[torch.Tensor] | None = None
    offset: int = -1
    fragment: tuple[int, int, int] | None = None
    interleaved: bool = False


@dataclass(slots=True)
class GroupLayout:
    """Where a matrix group's parameters live (``bind_layouts``); ``flat`` for a ZeRO-1/2 partition."""

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
            units.append(Unit(index=i, rows=rows, tp_dim=m.tp_dim, shape=(shape[0], shape[1]),
                              interleaved=m.interleaved and rows is None and tp > 1))
    return units


def whole_units(shapes: list[tuple[int, int]]) -> list[Unit]:
    """One unit per parameter, no tensor parallelism (an unbound optimizer)."""
    return [Unit(index=i, rows=None, tp_dim=None, shape=s) for i, s in enumerate(shapes)]


def step_units(
    params: list[torch.nn.Parameter], layout: GroupLayout | None, who: str, check_unbound: Callable[[list], None]
) -> tuple[list[torch.nn.Parameter], list[Unit]]:
    """The parameters a matrix step updates and their units: without a layout (one process or
    ZeRO-0 before binding) each matrix with a gradient is its own unit; with one, every rank must
    hold a gradient for every matrix (the owners' collectives need all of them)."""
    if layout is None:
        params = [p for p in params if p.grad is not None]
        check_unbound(params)
        return params, whole_units([(p.size(0), p.size(1)) for p in params])
    missing = [m.name for p, m in zip(params, layout.matrices, strict=True) if p.grad is None]
    if missing:
        raise RuntimeError(f"{who}: no gradient for {missing}; every rank must update every matrix")
    return params, layout.units


def _piece(inputs: list[torch.Tensor], unit: Unit) -> torch.Tensor:
    d = inputs[unit.index]
    return d if unit.rows is None else d.index_select(-2, unit.rows)


def _merge(parts: list[torch.Tensor], unit: Unit) -> torch.Tensor:
    """The logical matrix from the TP ranks' pieces (rank order)."""
    dim = unit.tp_dim - 2
    if not unit.interleaved:
        return torch.cat(parts, dim=dim)
    halves = [p.chunk(2, dim=-2) for p in parts]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=-2)


def _split(full: torch.Tensor, unit: Unit, rank: int, tp: int) -> torch.Tensor:
    """This TP rank's piece of a logical result (inverse of ``_merge``)."""
    if unit.tp_dim is None:
        return full
    if not unit.interleaved:
        return full.chunk(tp, dim=unit.tp_dim - 2)[rank].contiguous()
    gate, up = full.chunk(2, dim=-2)
    return torch.cat([gate.chunk(tp, dim=-2)[rank], up.chunk(tp, dim=-2)[rank]], dim=-2)


def _tp_run(pieces: list[torch.Tensor], positions: list[int], units: list[Unit], tp_owners: list[int],
            fn: UnitFn, dtype: torch.dtype, tp_group: Any) -> list[torch.Tensor]:
    """Each unit's result on its logical matrix, cut back to this TP rank's piece."""
    tp = group_size(tp_group)
    if tp == 1:
        return [fn(i, p).contiguous() for i, p in zip(positions, pieces, strict=True)]
    me = dist.get_rank(tp_group)
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
    for i, piece, unit, owner, parts in zip(positions, pieces, units, tp_owners, gathered, strict=True):
        if owner == me:
            result = fn(i, piece if parts is None else _merge(parts, unit)).contiguous()
        else:
            result = torch.empty(unit.shape, dtype=dtype, device=piece.device)
        results.append(result)
        src = dist.get_global_rank(tp_group, owner)
        works.append(dist.broadcast(result, src=src, group=tp_group, async_op=True))
    for work in works:
        work.wait()
    return [_split(r, u, me, tp) for r, u in zip(results, units, strict=True)]


def run_units(inputs: list[torch.Tensor], units: list[Unit], workers: list[int], fn: UnitFn, *,
              dtype: torch.dtype, tp_group: Any, dp_group: Any) -> list[torch.Tensor]:
    """Every unit's result, as this rank's piece, each ``fn`` run once over the TP x DP ranks.

    Args:
        inputs: The group's local (TP shard) inputs, by parameter; the matrix is the last two dims.
        units: ``make_units`` of the group.
        workers: Each unit's worker in ``[0, dp * tp)`` (DP rank ``w // tp``, TP rank ``w % tp``).
        fn: ``fn(position in units, logical input) -> logical 2-D result`` in ``dtype``.
        dtype: The results' dtype (buffers that receive them).
        tp_group, dp_group: Process groups, or None for size 1.
    """
    tp, dp = group_size(tp_group), group_size(dp_group)
    my_dp = 0 if dp == 1 else dist.get_rank(dp_group)
    mine = [i for i, w in enumerate(workers) if w // tp == my_dp]
    done = _tp_run([_piece(inputs, units[i]) for i in mine], mine, [units[i] for i in mine],
                   [workers[i] % tp for i in mine], fn, dtype, tp_group)
    pieces: list[torch.Tensor | None] = [None] * len(units)
    for i, result in zip(mine, done, strict=True):
        pieces[i] = result
    if dp == 1:
        return pieces
    works = []
    for i, unit in enumerate(units):
        if pieces[i] is None:
            d = inputs[unit.index]
            rows = d.size(-2) if unit.rows is None else unit.rows.numel()
            pieces[i] = torch.empty((rows, d.size(-1)), dtype=dtype, device=d.device)
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


def gather_flat(partition: torch.Tensor, layout: GroupLayout, dp_group: Any) -> list[torch.Tensor]:
    """Every matrix's full (TP shard) tensor from the DP ranks' flat partitions."""
    dp = group_size(dp_group)
    if dp == 1:
        full = partition
    else:
        parts = [torch.empty_like(partition) for _ in range(dp)]
        dist.all_gather(parts, partition.contiguous(), group=dp_group)
        full = torch.cat(parts)
    out = []
    for m in layout.matrices:
        numel = m.shape[0] * m.shape[1]
        out.append(full.narrow(0, m.offset, numel).view(m.shape))
    return out


def place_flat(matrices: list[MatrixLayout], named: dict[str, Any], group_index: int,
               partition_numel: int, dp_group: Any, who: str) -> None:
    """Each matrix's offset in the unpartitioned flat buffer and its fragment on this rank."""
    me = 0 if group_size(dp_group) == 1 else dist.get_rank(dp_group)
    offsets = {}
    for m in matrices:
        fragment = getattr(named[m.name], "_hp_mapping", None)
        if fragment is None:  # no element of it in this rank's partition
            continue
        if fragment.param_group_index != group_index:
            raise RuntimeError(f"{who}: {m.name} is in DeepSpeed's group {fragment.param_group_index}, "
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
                raise RuntimeError(f"{who}: DP ranks disagree where {name} starts in the flat buffer "
                                   f"({merged[name]} vs {offset}); DeepSpeed's layout is not contiguous")
    for m in matrices:
        if m.name not in merged:
            raise RuntimeError(f"{who}: no DP rank holds a fragment of {m.name}")
        m.offset = merged[m.name]


PartsFn = Callable[[str, int, Any, int], "list[torch.Tensor] | None"]


def bind_layouts(host: Any, who: str, parts: PartsFn | None = None) -> tuple[dict[str, GroupLayout], Any]:
    """Where a built matrix optimizer's matrices live, from the engine after ``deepspeed.initialize``
    (ZeRO-1/2 partitions and the parameters' ``_hp_mapping`` exist by then).

    Args:
        host: A ``host.StepHost``.
        who: The optimizer's name, for errors.
        parts: ``parts(name, local rows, model spec, tp)`` -> row indices of sub-matrices, or None.

    Returns:
        ``{group name: GroupLayout}`` of the matrix groups, and the TP group (None at TP=1).
    """
    from megatron.core import parallel_state

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
                parts=None if parts is None else parts(name, shape[0], spec, tp),
                interleaved=layout == "swiglu",
            ))
        held = group["params"][0]
        flat = held.ndim == 1
        if flat:
            place_flat(matrices, named, index, held.numel(), optimizer.dp_group, who)
        layouts[group["name"]] = GroupLayout(matrices=matrices, flat=flat, partition_numel=held.numel(),
                                             units=make_units(matrices, tp))
    return layouts, tp_group
