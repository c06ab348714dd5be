"""Universal checkpoints: one full (unsharded) tensor per parameter and state, loadable at any
TP/PP/DP size and ZeRO stage.

Layout (DeepSpeed's, so ``ds_to_universal`` output and ours are interchangeable)::

    DIR/zero/<name>/fp32.pt          {"param": full fp32 weight, "cat_dim": ...}
    DIR/zero/<name>/<state>.pt       same for each optimizer state (exp_avg, exp_avg_sq, ...)
    DIR/zero/<name>/step.pt          the optimizer step (a scalar)
    DIR/zero/optimizer_state.pt      {"param_groups": [...]} (hyperparameters, group counters)
    DIR/run_metadata.json            ours (DeepSpeed's tool leaves it in mp_rank_00's client state)
    DIR/continual/                   ours: EWC theta*/F and the LwF teacher, full tensors
                                     (``megatron/continual/universal_state.py``)

Loading: weights go into the freshly built model *before* ``deepspeed.initialize`` (so every
ZeRO stage and precision makes its master copies from them); optimizer states go in afterwards
through DeepSpeed's per-parameter setters (ZeRO 1-3, bf16) or straight into the torch optimizer
(fp32 ZeRO-0).
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import TYPE_CHECKING, Any, Protocol

import torch

from megatron.checkpointing.importing.safe_pickle import load_pt
from megatron.checkpointing.layout import canonical_name, full_shapes, split, tp_layout
from megatron.checkpointing.metadata import CheckpointError
from megatron.checkpointing.reader import CLIENT_KEY, WEIGHT, load_file
from megatron.config.checkpoint_files import LATEST_UNIVERSAL_FILE, METADATA_FILE
from megatron.distributed.context import ParallelContext
from megatron.model.spec import GPTSpec
from megatron.optimizer.registry import OptimizerSpec

if TYPE_CHECKING:  # third-party type only
    from deepspeed import DeepSpeedEngine

log = logging.getLogger(__name__)

STEP = "step"


def is_universal(directory: str) -> bool:
    """True for a directory holding a universal checkpoint (``zero/``)."""
    return os.path.isdir(os.path.join(directory, "zero"))


def resolve_universal_dir(load: str) -> str:
    """The universal checkpoint ``--load`` names: the directory itself, or ``latest_universal``.

    Raises:
        CheckpointError: None there, with the conversion command.
    """
    if is_universal(load):
        return load
    pointer = os.path.join(load, LATEST_UNIVERSAL_FILE)
    if os.path.isfile(pointer):
        with open(pointer) as f:
            path = os.path.join(load, f.read().strip())
        if is_universal(path):
            return path
        raise CheckpointError(f"--universal-checkpoint: {pointer} names {path}, which holds no zero/ "
                              "directory; the conversion did not finish")
    raise CheckpointError(
        f"--universal-checkpoint: {load} holds no universal checkpoint (no zero/ and no "
        f"{LATEST_UNIVERSAL_FILE}); convert one first: python tools/convert_checkpoint.py --input {load}")


class UniversalCheckpoint:
    """Read access to a universal checkpoint directory.

    Raises:
        CheckpointError: Missing metadata or parameters.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.metadata = self._read_metadata()
        self.spec = GPTSpec(**self.metadata["model"])
        zero = os.path.join(directory, "zero")
        self.dirs = {}
        for entry in os.listdir(zero):
            if os.path.isdir(os.path.join(zero, entry)):
                self.dirs[canonical_name(entry, self.spec.num_layers)] = os.path.join(zero, entry)

    def _read_metadata(self) -> dict[str, Any]:
        path = os.path.join(self.directory, METADATA_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
        # DeepSpeed's ds_to_universal copies the model-state files, which carry it. They may be
        # another framework's: read them without unpickling anything but plain data.
        foreign = False
        for name in sorted(os.listdir(self.directory)):
            if name.endswith("model_states.pt") and not name.startswith("layer_"):
                state = load_pt(os.path.join(self.directory, name))
                if state.get(CLIENT_KEY) is not None:
                    return state[CLIENT_KEY]["run_metadata"]
                foreign = foreign or "args" in state
        hint = (f"; it is a Megatron-DeepSpeed checkpoint: import it with python tools/import_checkpoint.py "
                f"--input {self.directory} --output SAVE --format megatron-deepspeed" if foreign else
                "; it was not converted from our checkpoint")
        raise CheckpointError(f"--universal-checkpoint: {self.directory} has neither {METADATA_FILE} "
                              f"nor a model-state file of ours{hint}")

    def state_keys(self, name: str) -> list[str]:
        """State files of parameter ``name`` (``fp32`` first)."""
        keys = sorted(f[:-3] for f in os.listdir(self.dirs[name]) if f.endswith(".pt"))
        return [WEIGHT, *[k for k in keys if k != WEIGHT]]

    def full(self, name: str, key: str) -> Any:
        """The full tensor (or scalar) of state ``key`` of parameter ``name``."""
        if name not in self.dirs:
            raise CheckpointError(f"--universal-checkpoint: {self.directory}/zero has no parameter {name!r}")
        value = load_file(os.path.join(self.dirs[name], f"{key}.pt"))
        return value["param"] if isinstance(value, dict) else value

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The saved optimizer's param groups (hyperparameters and group-level counters)."""
        path = os.path.join(self.directory, "zero", "optimizer_state.pt")
        return load_file(path).get("param_groups", []) if os.path.isfile(path) else []


def load_weights(module: torch.nn.Module, uc: UniversalCheckpoint, spec: GPTSpec, tp_rank: int, tp: int) -> None:
    """Copy this rank's slice of every weight into ``module`` (dense GPT or pipeline stage)."""
    with torch.no_grad():
        for local, param in module.named_parameters():
            name = canonical_name(local, spec.num_layers)
            value = split(uc.full(name, WEIGHT), tp_layout(name, spec), tp_rank, tp)
            if tuple(value.shape) != tuple(param.shape):
                raise CheckpointError(f"--universal-checkpoint: {name} is {tuple(value.shape)} for TP rank "
                                      f"{tp_rank}/{tp}, the model expects {tuple(param.shape)}")
            param.copy_(value)


def _master_partitions(optimizer: Any) -> list[torch.Tensor] | None:
    """DeepSpeed's flat fp32 master partitions (ZeRO 1/2, bf16, ZeRO-3), or None (torch optimizer)."""
    for attr in ("single_partition_of_fp32_groups", "fp32_groups_flat_partition", "fp32_partitioned_groups_flat"):
        if hasattr(optimizer, attr):
            return list(getattr(optimizer, attr))
    return None


class _EngineHost(Protocol):
    """What ``load_optimizer_states`` reads of the trainer's engine (``trainer.protocols.EngineView``)."""

    engine: DeepSpeedEngine
    ctx: ParallelContext
    optimizer_spec: OptimizerSpec

    @property
    def module(self) -> torch.nn.Module:
        """The unwrapped model."""


def load_optimizer_states(train_engine: _EngineHost, uc: UniversalCheckpoint, group_state_keys: tuple[str, ...]) -> None:
    """Put the checkpoint's optimizer states into the (already initialized) engine's optimizer.

    Raises:
        CheckpointError: The checkpoint lacks states this optimizer keeps.
    """
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    engine, spec = train_engine.engine, uc.spec
    ctx = train_engine.ctx
    shapes = full_shapes(spec)
    local_names = {canonical_name(n, spec.num_layers): n for n, _ in train_engine.module.named_parameters()}
    named = [(canonical_name(n, spec.num_layers), p) for n, p in train_engine.module.named_parameters()]
    pattern = train_engine.optimizer_spec.matrix_state_keys
    is_matrix = (lambda key: False) if pattern is None else re.compile(pattern).fullmatch
    matrix = {local_names[name]: {k: uc.full(name, k) for k in uc.state_keys(name) if is_matrix(k)}
              for name, _ in named}
    keys = {name: [k for k in uc.state_keys(name) if k not in (WEIGHT, STEP) and not is_matrix(k)]
            for name, _ in named}
    steps = {name: uc.full(name, STEP) for name, _ in named if STEP in uc.state_keys(name)}
    if not any(keys.values()):
        raise CheckpointError(f"--universal-checkpoint: {uc.directory} holds no optimizer states; "
                              "add --no-load-optim to start the optimizer fresh")
    flats = _master_partitions(engine.optimizer)
    low_precision = flats is not None and (engine.bfloat16_enabled() or engine.fp16_enabled())
    if flats is not None:
        base = engine.optimizer.optimizer
        step = next(iter(steps.values()), None)
        state_keys = sorted({k for ks in keys.values() for k in ks})
        for flat in flats:
            base.state[flat] = {k: torch.zeros_like(flat) for k in state_keys}
            if step is not None:
                base.state[flat][STEP] = step.clone() if torch.is_tensor(step) else step
        if hasattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state"):
            engine.optimizer._hp_optimizer_states_linked = False
            engine.optimizer._lazy_init_hp_params_optimizer_state()
    optimizer = engine.optimizer if flats is None else engine.optimizer.optimizer
    for name, param in named:
        layout = tp_layout(name, spec)
        if low_precision:
            # The master copies were made from the bf16/fp16 module: give them the fp32 values.
            safe_set_full_fp32_param(param, split(uc.full(name, WEIGHT), layout, ctx.tp_rank, ctx.tp_size))
        for key in keys[name]:
            value = uc.full(name, key)
            if torch.is_tensor(value) and tuple(value.shape) == shapes[name]:
                value = split(value, layout, ctx.tp_rank, ctx.tp_size)
            if flats is None:
                optimizer.state[param][key] = value.clone() if torch.is_tensor(value) else value
            else:
                safe_set_full_optimizer_state(param, value.contiguous(), key)
        if flats is None and name in steps:
            step = steps[name]
            optimizer.state[param][STEP] = step.clone() if torch.is_tensor(step) else step
    if any(matrix.values()):
        # Whole-matrix states (dshampoo's blocks) go to each matrix's owner rank.
        optimizer.load_matrix_states({n: states for n, states in matrix.items() if states})
    saved_groups = uc.optimizer_groups()
    for group, saved in zip(optimizer.param_groups, saved_groups, strict=False):
        for key in group_state_keys:
            if key in saved:
                group[key] = saved[key]
    log.info("universal checkpoint: optimizer states %s loaded for %d tensors",
             sorted({k for ks in keys.values() for k in ks}), len(named))
