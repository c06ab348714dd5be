"""Convert a checkpoint of ours (any ZeRO stage, TP, PP, DP) into a universal checkpoint.

One pass, parameter by parameter: each worker reads the fragments of its parameters straight from
the memory-mapped source files, merges them over TP and writes ``zero/<name>/<state>.pt``. No
per-fragment temporary files (DeepSpeed's ``ds_to_universal`` writes one per rank, parameter and
state, then reads them back), so the only disk used is the output, which is written under a
temporary name and renamed when complete; a failed conversion removes it.

The verification pass re-reads every written tensor, checks the set of parameters and their full
shapes against the model in the run metadata, and checks that splitting each tensor for every
source TP rank gives back that rank's saved slice bit for bit.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from megatron.checkpointing.checkpoint import METADATA_FILE, CheckpointError
from megatron.checkpointing.layout import full_shapes, split, tp_layout
from megatron.checkpointing.reader import WEIGHT, SavedCheckpoint, load_file
from megatron.checkpointing.universal import LATEST_UNIVERSAL_FILE, STEP
from megatron.checkpointing.side_states import SIDE_STATES

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConvertReport:
    """What a conversion did.

    Attributes:
        output: The universal checkpoint directory.
        parameters: Parameters written.
        states: State names written per parameter (``fp32`` included).
        bytes_written: Size of the output.
        seconds: Wall time of the conversion (verification excluded).
        verify_seconds: Wall time of the verification pass (0 when skipped).
        regularizers: Side state carried (``side_states.py``; EWC/LwF: ``ewc``, ``teacher``).
    """

    output: str
    parameters: int
    states: tuple[str, ...]
    bytes_written: int
    seconds: float
    verify_seconds: float
    regularizers: tuple[str, ...] = ()


def _cat_dim(layout: str) -> dict[str, Any]:
    if layout == "dim0":
        return {"cat_dim": 0}
    if layout == "dim1":
        return {"cat_dim": 1}
    if layout == "swiglu":
        return {"cat_dim": 0, "param_n_sub_params": 2}
    return {}


def _write_params(source: str, out_zero: str, names: list[str]) -> list[str]:
    """Worker: write every state of ``names``; returns the state keys seen."""
    ckpt = SavedCheckpoint(source)
    keys: set[str] = set()
    for name in names:
        directory = os.path.join(out_zero, name)
        os.makedirs(directory, exist_ok=True)
        layout = tp_layout(name, ckpt.spec)
        for key in ckpt.state_keys(name):
            value = ckpt.full(name, key)
            keys.add(key)
            if key == STEP or not torch.is_tensor(value) or value.dim() == 0:
                torch.save(value, os.path.join(directory, f"{key}.pt"))
            else:
                torch.save({"param": value.contiguous(), **_cat_dim(layout)}, os.path.join(directory, f"{key}.pt"))
    return sorted(keys)


def _chunks(names: list[str], n: int) -> list[list[str]]:
    return [names[i::n] for i in range(n) if names[i::n]]


def _one_thread() -> None:
    # A forked worker must not enter the parent's OpenMP thread pool (libgomp can hang or crash
    # there); the workers are the parallelism anyway. It dies on SIGTERM even when the parent
    # has a Python handler (a training run's graceful stop).
    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def convert(
    source: str,
    output: str | None = None,
    *,
    workers: int = 1,
    verify: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertReport:
    """Convert checkpoint step directory ``source`` to a universal checkpoint.

    Args:
        source: ``SAVE/global_stepN`` (or ``SAVE``: its ``latest``).
        output: Target directory (default ``<source>_universal``; must not exist).
        workers: Processes reading and writing parameters in parallel.
        verify: Run the verification pass.
        progress: Called with (parameters done, total).

    Raises:
        CheckpointError: Unreadable or foreign source, existing output, failed verification.
    """
    source = step_dir(source)
    output = output or f"{source.rstrip('/')}_universal"
    if os.path.exists(output):
        raise CheckpointError(f"--output: {output} already exists; remove it or choose another directory")
    ckpt = SavedCheckpoint(source)
    expected = full_shapes(ckpt.spec)
    names = ckpt.names()
    if sorted(names) != sorted(expected):
        missing, extra = sorted(set(expected) - set(names)), sorted(set(names) - set(expected))
        raise CheckpointError(f"{source}: parameters differ from the model in its metadata "
                              f"(missing {missing[:5]}, unexpected {extra[:5]})")
    tmp = f"{output}.tmp-{os.getpid()}"
    started = time.perf_counter()
    try:
        zero = os.path.join(tmp, "zero")
        os.makedirs(zero)
        keys: set[str] = set()
        done = 0
        chunks = _chunks(sorted(names, key=lambda n: -math.prod(expected[n])), max(1, workers) * 4)
        if workers > 1:
            # Garbage left in this process (e.g. a finished run's process groups) must not be
            # collected in a forked worker: its finalizers segfault there (seen in the tests).
            gc.collect()
            with ProcessPoolExecutor(workers, initializer=_one_thread) as pool:
                for chunk, seen in zip(chunks, pool.map(_write_params, [source] * len(chunks), [zero] * len(chunks), chunks), strict=True):
                    keys.update(seen)
                    done += len(chunk)
                    if progress:
                        progress(done, len(names))
        else:
            for chunk in chunks:
                keys.update(_write_params(source, zero, chunk))
                done += len(chunk)
                if progress:
                    progress(done, len(names))
        _write_common(ckpt, source, tmp)
        regularizers = [name for side in SIDE_STATES.values() for name in side.convert(ckpt, tmp)]
        seconds = time.perf_counter() - started
        verify_seconds = 0.0
        if verify:
            t0 = time.perf_counter()
            verify_universal(tmp, ckpt)
            verify_seconds = time.perf_counter() - t0
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    parent, leaf = os.path.split(output.rstrip("/"))
    if os.path.abspath(parent) == os.path.abspath(os.path.dirname(source.rstrip("/"))):
        with open(os.path.join(parent, LATEST_UNIVERSAL_FILE), "w") as f:
            f.write(leaf)
    return ConvertReport(output=output, parameters=len(names), states=tuple(sorted(keys)),
                         bytes_written=_du(output), seconds=seconds, verify_seconds=verify_seconds,
                         regularizers=tuple(regularizers))


def _write_common(ckpt: SavedCheckpoint, source: str, out: str) -> None:
    groups = []
    first = ckpt.ranks[min(ckpt.ranks)]
    state = load_file(first["file"])
    if ckpt.zero_stage == 0 and state.get("optimizer"):
        groups = [{k: v for k, v in g.items() if k != "params"} for g in state["optimizer"]["param_groups"]]
    elif ckpt.zero_stage > 0:
        optim = [f for f in os.listdir(source) if f.endswith("_optim_states.pt")]
        sd = load_file(os.path.join(source, sorted(optim)[0]))["optimizer_state_dict"]
        base = sd.get("base_optimizer_state") or sd.get("optimizer_state_dict") or {}
        groups = [{k: v for k, v in g.items() if k != "params"} for g in base.get("param_groups", [])]
    torch.save({"param_groups": groups}, os.path.join(out, "zero", "optimizer_state.pt"))
    metadata = dict(ckpt.metadata)
    metadata["universal"] = {"source": os.path.abspath(source), "tp": ckpt.tp, "pp": ckpt.pp,
                             "dp": ckpt.dp, "zero_stage": ckpt.zero_stage}
    with open(os.path.join(out, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=1, default=str)


def verify_universal(directory: str, ckpt: SavedCheckpoint) -> None:
    """Check a written universal checkpoint against its source (see the module docstring).

    Raises:
        CheckpointError: The first difference found.
    """
    from megatron.checkpointing.universal import UniversalCheckpoint

    uc = UniversalCheckpoint(directory)
    for name, shape in full_shapes(ckpt.spec).items():
        full = uc.full(name, WEIGHT)
        if tuple(full.shape) != shape:
            raise CheckpointError(f"verification: {name} is {tuple(full.shape)}, expected {shape}")
        layout = tp_layout(name, ckpt.spec)
        for key in uc.state_keys(name):
            if ckpt.is_matrix_key(key):
                continue  # a whole logical matrix's state: no TP slices to compare
            value = full if key == WEIGHT else uc.full(name, key)
            if not torch.is_tensor(value) or tuple(value.shape) != shape:
                continue
            for slot in ckpt.slots[name]:
                if not torch.equal(split(value, layout, slot.tp, ckpt.tp), ckpt.local(slot, key)):
                    raise CheckpointError(f"verification: {name}/{key} differs from TP rank {slot.tp} of "
                                          f"pipeline stage {slot.pp} in the source")
    for side in SIDE_STATES.values():
        side.verify(directory, ckpt)


def step_dir(source: str) -> str:
    latest = os.path.join(source, "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            return os.path.join(source, f.read().strip())
    return source


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
