"""EWC's ``theta*`` and ``F`` and LwF's teacher through a universal checkpoint.

A checkpoint saved with EWC/LwF holds ``global_stepN/continual/tp{t}_pp{p}_dp{d}.pt`` per rank
(``regularizers.py``): EWC shards (whole TP-local parameters at ZeRO-0, the fp32 master
partition's slices at ZeRO-1/2) and, on DP rank 0, the teacher's TP-local weights. The
conversion gathers the shards over DP and merges them over TP exactly as the weights are merged
(``layout.merge``), and writes, next to ``zero/``::

    DIR/continual/ewc.json               {"weight": lambda, "num_iterations": N}
    DIR/continual/ewc/<name>.pt          {"anchor": full fp32 theta*, "fisher": full fp32 F}
    DIR/continual/teacher/<name>.pt      the teacher's full weight (LwF)

The converter finds these two functions through ``checkpointing.side_states.SIDE_STATES``.
Loading at any TP/DP/ZeRO layout splits each full tensor for the rank's TP slot and keeps the
elements its shards own: pure copies, so theta*/F are bit-exact. Verification re-splits every
tensor for every source rank and compares it with the saved shard.
"""

from __future__ import annotations

import glob
import json
import os
import re

import torch

from megatron.checkpointing.checkpoint import CheckpointError
from megatron.checkpointing.layout import canonical_name, merge, split, tp_layout
from megatron.checkpointing.reader import SavedCheckpoint, load_file
from megatron.checkpointing.side_states import SIDE_STATES, SideState
from megatron.continual.ewc import Shard
from megatron.model.spec import GPTSpec

STATE_DIR = "continual"
EWC_META = "ewc.json"
_RANK_FILE = re.compile(r"tp(\d+)_pp(\d+)_dp(\d+)\.pt")


def rank_states(source: str) -> dict[tuple[int, int, int], dict]:
    """``(tp, pp, dp) -> saved state`` of a step directory's EWC/LwF files (empty when none)."""
    states = {}
    for path in sorted(glob.glob(os.path.join(source, STATE_DIR, "tp*_pp*_dp*.pt"))):
        match = _RANK_FILE.fullmatch(os.path.basename(path))
        if match is not None:
            states[tuple(int(g) for g in match.groups())] = load_file(path)
    return states


def _ewc_index(ckpt: SavedCheckpoint, states: dict) -> dict[str, dict[int, list[tuple]]]:
    """canonical name -> TP rank -> its shards ``(start, numel, rank key, index in the file)``."""
    index: dict[str, dict[int, list[tuple]]] = {}
    for rank, state in sorted(states.items()):
        ewc = state.get("ewc")
        if ewc is None:
            continue
        for i, (name, start, numel, _) in enumerate(ewc["shards"]):
            canon = canonical_name(name, ckpt.spec.num_layers)
            if canon not in ckpt.slots:
                raise CheckpointError(f"{ckpt.directory}/{STATE_DIR}: EWC shard of {name!r} (rank {rank}) "
                                      "names no parameter of the checkpoint")
            index.setdefault(canon, {}).setdefault(rank[0], []).append((start, numel, rank, i))
    return index


def _local_ewc(ckpt: SavedCheckpoint, states: dict, canon: str, tp: int, shards: list[tuple]) -> list[torch.Tensor]:
    """TP rank ``tp``'s (anchor, fisher) of one parameter, gathered over its DP ranks' shards."""
    shape = next(s.shape for s in ckpt.slots[canon] if s.tp == tp)
    size = torch.Size(shape).numel()
    anchor, fisher, seen = torch.zeros(size), torch.zeros(size), torch.zeros(size, dtype=torch.bool)
    for start, numel, rank, i in shards:
        ewc = states[rank]["ewc"]
        anchor[start:start + numel] = ewc["anchor"][i]
        fisher[start:start + numel] = ewc["fisher"][i]
        seen[start:start + numel] = True
    if not bool(seen.all()):
        raise CheckpointError(f"{ckpt.directory}/{STATE_DIR}: the EWC anchor of TP rank {tp} does not "
                              f"cover every element of {canon}; the checkpoint's EWC files are incomplete")
    return [anchor.view(shape), fisher.view(shape)]


def _write_ewc(ckpt: SavedCheckpoint, states: dict, out: str) -> None:
    """One parameter at a time (the source files are memory-mapped): memory ~ the largest one."""
    first = next(s["ewc"] for s in states.values() if s.get("ewc") is not None)
    index = _ewc_index(ckpt, states)
    missing = sorted(set(ckpt.slots) - set(index))
    if missing or any(sorted(by_tp) != list(range(ckpt.tp)) for by_tp in index.values()):
        raise CheckpointError(f"{ckpt.directory}/{STATE_DIR}: EWC files miss parameters or TP ranks "
                              f"({missing[:3]}); the checkpoint's EWC files are incomplete")
    directory = os.path.join(out, STATE_DIR, "ewc")
    os.makedirs(directory)
    for canon, by_tp in index.items():
        pieces = [_local_ewc(ckpt, states, canon, tp, by_tp[tp]) for tp in range(ckpt.tp)]
        layout = tp_layout(canon, ckpt.spec)
        full = {key: merge([p[i] for p in pieces], layout).contiguous()
                for i, key in enumerate(("anchor", "fisher"))}
        torch.save(full, os.path.join(directory, f"{canon}.pt"))
    with open(os.path.join(out, STATE_DIR, EWC_META), "w") as f:
        json.dump({"weight": first["weight"], "num_iterations": first["num_iterations"]}, f)


def _write_teacher(ckpt: SavedCheckpoint, states: dict, out: str) -> None:
    pieces = [states[(t, 0, 0)].get("teacher") for t in range(ckpt.tp) if (t, 0, 0) in states]
    if len(pieces) != ckpt.tp or any(p is None for p in pieces):
        raise CheckpointError(f"{ckpt.directory}/{STATE_DIR}: the LwF teacher is missing for some TP rank "
                              "(it is saved by DP rank 0 of each); the checkpoint is incomplete")
    directory = os.path.join(out, STATE_DIR, "teacher")
    os.makedirs(directory)
    for key in pieces[0]:
        name = canonical_name(key, ckpt.spec.num_layers)
        value = merge([p[key] for p in pieces], tp_layout(name, ckpt.spec)).contiguous()
        torch.save(value, os.path.join(directory, f"{name}.pt"))


def convert_regularizers(ckpt: SavedCheckpoint, out: str) -> list[str]:
    """Write the source's EWC anchor and LwF teacher (if any) into universal directory ``out``.

    Returns:
        What was written: ``ewc``, ``teacher``.

    Raises:
        CheckpointError: Incomplete EWC/LwF files, or pipeline stages (EWC/LwF run at PP=1).
    """
    states = rank_states(ckpt.directory)
    if not states:
        return []
    if any(pp > 0 for _, pp, _ in states):
        raise CheckpointError(f"{ckpt.directory}/{STATE_DIR}: EWC/LwF files of pipeline stages > 0; "
                              "EWC and LwF run at PP=1 only")
    written = []
    if any(s.get("ewc") is not None for s in states.values()):
        _write_ewc(ckpt, states, out)
        written.append("ewc")
    if any(s.get("teacher") is not None for s in states.values()):
        _write_teacher(ckpt, states, out)
        written.append("teacher")
    return written


def verify_regularizers(out: str, ckpt: SavedCheckpoint) -> None:
    """Every source rank's EWC shards and teacher slices, re-split from ``out``, bit for bit.

    Raises:
        CheckpointError: The first difference.
    """
    for (tp, _, dp), state in sorted(rank_states(ckpt.directory).items()):
        ewc = state.get("ewc")
        for (name, start, numel, _), anchor, fisher in zip(*(([], [], []) if ewc is None else
                                                             (ewc["shards"], ewc["anchor"], ewc["fisher"])),
                                                           strict=True):
            canon = canonical_name(name, ckpt.spec.num_layers)
            full = load_file(os.path.join(out, STATE_DIR, "ewc", f"{canon}.pt"))
            for key, saved in (("anchor", anchor), ("fisher", fisher)):
                local = split(full[key], tp_layout(canon, ckpt.spec), tp, ckpt.tp).reshape(-1)
                if not torch.equal(local[start:start + numel], saved):
                    raise CheckpointError(f"verification: EWC {key} of {canon} differs from TP rank {tp}, "
                                          f"DP rank {dp} of the source")
        for key, saved in (state.get("teacher") or {}).items():
            canon = canonical_name(key, ckpt.spec.num_layers)
            full = load_file(os.path.join(out, STATE_DIR, "teacher", f"{canon}.pt"))
            if not torch.equal(split(full, tp_layout(canon, ckpt.spec), tp, ckpt.tp), saved):
                raise CheckpointError(f"verification: LwF teacher {canon} differs from TP rank {tp}")


SIDE_STATES.add(STATE_DIR, SideState(convert_regularizers, verify_regularizers))


def has_regularizers(directory: str) -> dict[str, bool]:
    """What a universal directory carries: ``{"ewc": ..., "teacher": ...}``."""
    base = os.path.join(directory, STATE_DIR)
    return {"ewc": os.path.isfile(os.path.join(base, EWC_META)),
            "teacher": os.path.isdir(os.path.join(base, "teacher"))}


def load_ewc(directory: str, shards: list[Shard], spec: GPTSpec, tp_rank: int, tp: int) -> tuple[list, list, dict]:
    """This rank's (anchors, fishers) for ``shards`` (``ewc.owned_shards``) and the saved settings."""
    with open(os.path.join(directory, STATE_DIR, EWC_META)) as f:
        meta = json.load(f)
    anchors, fishers = [], []
    for shard in shards:
        canon = canonical_name(shard.name, spec.num_layers)
        full = load_file(os.path.join(directory, STATE_DIR, "ewc", f"{canon}.pt"))
        for key, dest in (("anchor", anchors), ("fisher", fishers)):
            local = split(full[key], tp_layout(canon, spec), tp_rank, tp).reshape(-1)
            dest.append(local.narrow(0, shard.start, shard.numel).clone())
    return anchors, fishers, meta


def load_teacher(directory: str, names: list[str], spec: GPTSpec, tp_rank: int, tp: int) -> dict[str, torch.Tensor]:
    """The teacher's TP-local state dict for module keys ``names``."""
    state = {}
    for key in names:
        canon = canonical_name(key, spec.num_layers)
        path = os.path.join(directory, STATE_DIR, "teacher", f"{canon}.pt")
        if not os.path.isfile(path):
            raise CheckpointError(f"--universal-checkpoint: {directory} has no LwF teacher weight {canon}")
        state[key] = split(load_file(path), tp_layout(canon, spec), tp_rank, tp).clone()
    return state
