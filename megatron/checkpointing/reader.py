"""Read a DeepSpeed checkpoint of ours as full (TP-merged) tensors, for any ZeRO stage, TP, PP, DP.

Every rank's files are opened memory-mapped and lazily, so reading one parameter touches only the
pages of its fragments: no temporary files, memory bounded by the largest parameter.

Where each piece lives:

- fp32 ZeRO-0: weights in the module state (``mp_rank_XX_model_states.pt``, or the pipeline's
  ``layer_JJ-model_TT-model_states.pt``), optimizer state in the torch ``state_dict`` of
  ``mp_rank_XX`` (indexed in the order of ``param_names``, which we save);
- ZeRO-1/2 and DeepSpeed's bf16 optimizer: flat fp32 partitions per data-parallel rank with
  DeepSpeed's ``param_slice_mappings`` (name -> start, numel);
- ZeRO-3: flat fp32 partitions in which every parameter takes ``ceil(numel / dp)`` elements per
  rank, in the order of ``param_shapes``.

``megatron_checkpoint`` (our client state, one per model-parallel rank) names each file's
pipeline stage and TP rank, so no rank arithmetic on file names is needed.
"""

from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from megatron.checkpointing.checkpoint import CheckpointError
from megatron.checkpointing.layout import canonical_name, merge, tp_layout
from megatron.checkpointing.lifecycle import require_committed
from megatron.checkpointing.safe_load import load_file as safe_load_file
from megatron.model.spec import GPTSpec
from megatron.optimizer.owners import split_owned_key
from megatron.optimizer.registry import OPTIMIZERS

CLIENT_KEY = "megatron_checkpoint"
WEIGHT = "fp32"


def load_file(path: str) -> Any:
    """A checkpoint file memory-mapped on CPU, unpickled with the allow-list (``safe_load.py``)."""
    return safe_load_file(path, mmap=True)


@dataclass(frozen=True, slots=True)
class Slot:
    """One TP-local parameter of one model-parallel rank."""

    mp_file: str
    pp: int
    tp: int
    name: str
    shape: tuple[int, ...]
    group: int
    index: int


class SavedCheckpoint:
    """A checkpoint directory (``SAVE/global_stepN``) written by this framework.

    Args:
        directory: The step directory.

    Raises:
        CheckpointError: Not a checkpoint of ours, already universal, or incomplete (no
            completion marker: an interrupted save).
    """

    def __init__(self, directory: str):
        self.directory = directory
        if os.path.isdir(os.path.join(directory, "zero")):
            raise CheckpointError(f"{directory} is already a universal checkpoint (it has zero/); "
                                  "load it with --universal-checkpoint, no conversion needed")
        require_committed(directory, "--input")  # an interrupted save is never converted or exported
        model_files = sorted(f for f in glob.glob(os.path.join(directory, "*model_states.pt"))
                             if not os.path.basename(f).startswith("layer_"))
        if not model_files:
            raise CheckpointError(f"{directory}: no DeepSpeed model-state files (*model_states.pt); "
                                  "give a checkpoint step directory such as SAVE/global_step1000")
        self._cache: dict[str, Any] = {}
        self.ranks: dict[tuple[int, int], dict[str, Any]] = {}
        for path in model_files:
            info = self._load(path).get(CLIENT_KEY)
            if info is None:
                raise CheckpointError(f"{path} carries no '{CLIENT_KEY}' client state: it was not "
                                      "written by this framework (or by a version before universal "
                                      "checkpoint support); it cannot be converted")
            if info["dp_rank"] == 0:
                self.ranks[(info["pp_rank"], info["tp_rank"])] = {**info, "file": path}
        first = self.ranks[min(self.ranks)]
        self.tp, self.pp, self.dp, self.zero_stage = first["tp"], first["pp"], first["dp"], first["zero_stage"]
        self.metadata: dict[str, Any] = first["run_metadata"]
        self.spec = GPTSpec(**self.metadata["model"])
        self._matrix_keys = _matrix_state_keys(self.metadata)
        missing = [(p, t) for p in range(self.pp) for t in range(self.tp) if (p, t) not in self.ranks]
        if missing:
            raise CheckpointError(f"{directory}: model-state files of (pipeline stage, TP rank) {missing} "
                                  "are missing; the checkpoint is incomplete")
        self.slots: dict[str, list[Slot]] = {}
        for (pp, tp), info in sorted(self.ranks.items()):
            shapes = info["param_shapes"]
            for g, names in enumerate(info["param_names"]):
                for i, name in enumerate(names):
                    canon = canonical_name(name, self.spec.num_layers)
                    slots = self.slots.setdefault(canon, [])
                    if any(s.tp == tp for s in slots):
                        continue  # a pipeline-replicated (tied) copy: the first stage's is kept
                    slots.append(Slot(info["file"], pp, tp, name, tuple(shapes[name]), g, i))
        self._flat_format = self._detect_optimizer_files()
        self._z3_offsets: dict[tuple[str, str], tuple[int, int]] = {}
        if self.zero_stage == 3:
            for info in self.ranks.values():
                for idx, shapes in enumerate(self._load(info["file"])["param_shapes"]):
                    offset = 0
                    for name, shape in shapes.items():
                        self._z3_offsets[(info["file"], name)] = (idx, offset)
                        offset += math.ceil(math.prod(shape) / self.dp)

    # ---- files -------------------------------------------------------------------------------

    def _load(self, path: str) -> Any:
        if path not in self._cache:
            if not os.path.isfile(path):
                raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
            self._cache[path] = load_file(path)
        return self._cache[path]

    def _detect_optimizer_files(self) -> str | None:
        files = glob.glob(os.path.join(self.directory, "*_optim_states.pt"))
        if not files:
            return None
        prefix = "bf16_zero" if any(os.path.basename(f).startswith("bf16_") for f in files) else "zero"
        return prefix

    def _optim_file(self, slot: Slot, dp_rank: int) -> str:
        mp = self.ranks[(slot.pp, slot.tp)]["mp_rank"]
        return os.path.join(self.directory, f"{self._flat_format}_pp_rank_{dp_rank}_mp_rank_{mp:02d}_optim_states.pt")

    # ---- public -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Canonical names of every parameter in the checkpoint."""
        return list(self.slots)

    def state_keys(self, name: str) -> list[str]:
        """``fp32`` and the optimizer state keys of parameter ``name`` (``step`` included)."""
        slot = self.slots[name][0]
        keys = {k for k in self._local_states(slot) if split_owned_key(k) is None and not self.is_matrix_key(k)}
        return [WEIGHT, *sorted(keys | set(self._matrix_states(name)))]

    def is_matrix_key(self, key: str) -> bool:
        """A state of the whole logical matrix (``OptimizerSpec.matrix_state_keys``: dshampoo's blocks)."""
        return self._matrix_keys is not None and self._matrix_keys.fullmatch(key) is not None

    def _matrix_states(self, name: str) -> dict[str, Any]:
        """The whole-matrix states of ``name``, from the one rank that owns them (any TP or DP
        rank: ``m<i>.<key>`` in a flat partition's state, ``<key>`` in a ZeRO-0 parameter's)."""
        if self._matrix_keys is None:
            return {}
        found: dict[str, Any] = {}
        for slot in self.slots[name]:
            if self._flat_format is None:
                per_rank = [self._local_states(slot)]
            elif self.zero_stage == 3:
                per_rank = []
            else:
                per_rank = [self._flat_states(slot, dp).get(slot.group, {}) for dp in range(self.dp)]
            for states in per_rank:
                for key, value in states.items():
                    owned = split_owned_key(key) if self._flat_format is not None else (slot.index, key)
                    if owned is not None and owned[0] == slot.index and self.is_matrix_key(owned[1]):
                        found.setdefault(owned[1], value)
        return found

    def full(self, name: str, key: str) -> Any:
        """State ``key`` of parameter ``name`` merged over TP ranks (a scalar for ``step``)."""
        if self.is_matrix_key(key):
            states = self._matrix_states(name)
            if key not in states:
                raise CheckpointError(f"{self.directory}: no rank holds {name}'s optimizer state {key!r}")
            return states[key]
        pieces = [self.local(slot, key) for slot in sorted(self.slots[name], key=lambda s: s.tp)]
        if not torch.is_tensor(pieces[0]) or pieces[0].shape != self.slots[name][0].shape:
            if self.tp > 1 and torch.is_tensor(pieces[0]) and pieces[0].dim() > 0:
                raise CheckpointError(
                    f"{name}: optimizer state {key!r} has shape {tuple(pieces[0].shape)}, not the "
                    f"parameter's, and cannot be merged over {self.tp} TP ranks")
            return pieces[0]
        return merge(pieces, tp_layout(name, self.spec))

    def local(self, slot: Slot, key: str) -> Any:
        """State ``key`` of one TP-local parameter (as that rank held it)."""
        if self._flat_format is None:
            return self._local_zero0(slot, key)
        if self.zero_stage == 3:
            return self._local_zero3(slot, key)
        return self._local_sliced(slot, key)

    # ---- ZeRO-0 ------------------------------------------------------------------------------

    def _local_states(self, slot: Slot) -> dict[str, Any]:
        if self._flat_format is None:
            optimizer = self._load(slot.mp_file).get("optimizer") or {}
            flat_index = sum(len(n) for n in self.ranks[(slot.pp, slot.tp)]["param_names"][: slot.group])
            return optimizer.get("state", {}).get(flat_index + slot.index, {})
        group = self._z3_offsets[(slot.mp_file, slot.name)][0] if self.zero_stage == 3 else slot.group
        return self._flat_states(slot, 0).get(group, {})

    def _local_zero0(self, slot: Slot, key: str) -> Any:
        if key != WEIGHT:
            return self._local_states(slot)[key]
        module = self._load(slot.mp_file).get("module")
        if module is not None:
            return module[slot.name]
        layer, rest = _pipeline_layer(slot.name)
        path = os.path.join(self.directory, f"layer_{layer:02d}-model_{slot.tp:02d}-model_states.pt")
        return self._load(path)[rest]

    # ---- ZeRO-1/2 (and the bf16 optimizer) -------------------------------------------------------

    def _flat_states(self, slot: Slot, dp_rank: int) -> Any:
        sd = self._load(self._optim_file(slot, dp_rank))["optimizer_state_dict"]
        if self.zero_stage == 3:
            return sd["optimizer_state_dict"]["state"]
        return sd["base_optimizer_state"]["state"]

    def _local_sliced(self, slot: Slot, key: str) -> Any:
        pieces = []
        for dp_rank in range(self.dp):
            sd = self._load(self._optim_file(slot, dp_rank))["optimizer_state_dict"]
            if key != WEIGHT:
                value = sd["base_optimizer_state"]["state"][slot.group][key]
                if not torch.is_tensor(value) or value.dim() == 0:
                    return value
            else:
                value = sd["single_partition_of_fp32_groups"][slot.group]
            fragment = sd["param_slice_mappings"][slot.group].get(slot.name)
            if fragment is not None:
                pieces.append(value.narrow(0, fragment.start, fragment.numel))
        return torch.cat(pieces).view(slot.shape).clone()

    # ---- ZeRO-3 ------------------------------------------------------------------------------

    def _local_zero3(self, slot: Slot, key: str) -> Any:
        numel = math.prod(slot.shape)
        part = math.ceil(numel / self.dp)
        group, offset = self._z3_offsets[(slot.mp_file, slot.name)]
        pieces = []
        for dp_rank in range(self.dp):
            sd = self._load(self._optim_file(slot, dp_rank))["optimizer_state_dict"]
            if key != WEIGHT:
                value = sd["optimizer_state_dict"]["state"][group][key]
                if not torch.is_tensor(value) or value.dim() == 0:
                    return value
            else:
                value = sd["fp32_flat_groups"][group]
            take = max(0, min(part, numel - dp_rank * part))
            pieces.append(value.narrow(0, offset, take))
        return torch.cat(pieces).view(slot.shape).clone()


def _matrix_state_keys(metadata: dict[str, Any]) -> re.Pattern | None:
    """``OptimizerSpec.matrix_state_keys`` of the checkpoint's optimizer, compiled (or None)."""
    name = (metadata.get("config") or {}).get("--optimizer")
    if name not in OPTIMIZERS or OPTIMIZERS[name].matrix_state_keys is None:
        return None
    return re.compile(OPTIMIZERS[name].matrix_state_keys)


def _pipeline_layer(name: str) -> tuple[int, str]:
    """``(layer index, name inside the layer)`` of a pipeline parameter name."""
    if name.startswith("tied_modules.embed."):
        return 0, name[len("tied_modules.embed."):]
    match = re.fullmatch(r"(\d+)\.(.+)", name)
    if match is None:
        raise CheckpointError(f"{name!r} is not a pipeline-layer parameter")
    return int(match.group(1)), match.group(2)
