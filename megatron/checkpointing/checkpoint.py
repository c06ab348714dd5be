"""Save and load: DeepSpeed model/optimizer states plus our run metadata.

Layout (Megatron-DeepSpeed's, which the seeds' tools expect)::

    SAVE/global_step{N}/...                 DeepSpeed's files for step N
    SAVE/latest                             "global_step{N}", written last
    SAVE/latest_checkpointed_iteration.txt  "N", written last

``global_step{N}/run_metadata.json`` (written by rank 0) holds the iteration, consumed samples,
scheduler state, the resolved config and plan: readable by people and tools, and checked before
any tensor is loaded. DeepSpeed's ``client_state`` holds what is per model-parallel rank (RNG
states). Saves are atomic from a reader's point of view: the
pointer files move (by rename) only after every rank has finished writing, so an interrupted
save leaves the previous checkpoint as ``latest``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron.checkpointing.async_save import async_engine
from megatron.checkpointing.lifecycle import prepare_step_dir, refuse_committed, save_failed
from megatron.checkpointing.lock import DirectoryLock
from megatron.checkpointing.metadata import CheckpointError, read_metadata  # noqa: F401  (re-exported for callers)
from megatron.config.checkpoint_files import (  # noqa: F401  (re-exported for callers)
    LATEST_FILE,
    LATEST_ITERATION_FILE,
    METADATA_FILE,
)

log = logging.getLogger(__name__)


def checkpoint_tag(iteration: int) -> str:
    """Directory name of the checkpoint taken after ``iteration`` steps."""
    return f"global_step{iteration}"


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _latest_name(save_dir: str) -> str | None:
    try:
        with open(os.path.join(save_dir, LATEST_FILE)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def read_latest_tag(load_dir: str) -> str | None:
    """The tag ``latest`` points to, or None when the directory holds no checkpoint yet.

    Raises:
        CheckpointError: ``latest`` names a directory that is missing.
    """
    path = os.path.join(load_dir, LATEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        tag = f.read().strip()
    if not os.path.isdir(os.path.join(load_dir, tag)):
        raise CheckpointError(
            f"--load: {path} names {tag!r}, which does not exist in {load_dir}; the checkpoint "
            "was moved or deleted"
        )
    return tag


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    for kind, module in _accelerator_modules():
        state[kind] = module.get_rng_state()
    return state


def _accelerator_modules() -> list[tuple[str, Any]]:
    # CUDA and Intel XPU keep their own generators (dropout draws from them on the device).
    return [(k, getattr(torch, k)) for k in ("cuda", "xpu")
            if hasattr(torch, k) and getattr(torch, k).is_available()]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for kind, module in _accelerator_modules():
        if kind in state:
            module.set_rng_state(state[kind])


def save_checkpoint(
    engine: Any,
    save_dir: str,
    iteration: int,
    metadata: dict[str, Any],
    client_state: dict[str, Any],
    side_files: Callable[[str], None] | None = None,
) -> str:
    """Save on every rank; move the ``latest`` pointers after all ranks are done.

    A committed step directory is never written again; a leftover of an interrupted save is
    replaced; a failed write (disk full) removes the partial directory.

    Args:
        engine: The DeepSpeed engine.
        save_dir: ``--save``.
        iteration: Completed optimizer steps.
        metadata: JSON-able run metadata (rank 0 writes it).
        client_state: Per-rank extras stored in DeepSpeed's model-state files.
        side_files: Writes extra files into the step directory (every rank, before the
            completion marker).

    With ``--async-save`` (an ``AsyncCheckpointEngine`` on the engine) this first waits for the
    previous save, then returns once the states are copied to host buffers; the files are
    written and committed (same protocol) by background threads.

    Returns:
        The checkpoint directory.
    """
    background = async_engine(engine)  # --async-save: DeepSpeed's writes are snapshots
    if background is not None:
        background.wait(engine.device)  # the previous save is written and committed first
        background.discard()  # copies left by a save that raised before its write started
        dist.barrier()  # rank 0's commit of it is visible to every rank
    tag = checkpoint_tag(iteration)
    path = os.path.join(save_dir, tag)
    latest = _latest_name(save_dir)
    refuse_committed(path, latest)  # every rank sees the same files: all refuse together
    dist.barrier()  # every rank has looked before rank 0 removes an interrupted save's leftover
    if dist.get_rank() == 0:
        prepare_step_dir(path, latest)
    dist.barrier()
    text = json.dumps(metadata, indent=1, default=str)
    try:
        engine.save_checkpoint(save_dir, tag=tag, client_state=client_state, save_latest=False)
        if side_files is not None:
            side_files(path)
        if background is not None:  # every rank's thread writes; rank 0's commits after all
            background.start(path, lambda: _commit(save_dir, path, iteration, text))
            log.info("checkpoint %s: snapshot taken, writing in the background", path)
            return path
        dist.barrier()
        if dist.get_rank() == 0:
            _commit(save_dir, path, iteration, text)
    except OSError as e:  # disk full, quota, I/O error: no partial step directory stays
        if background is not None:
            background.discard()
        raise save_failed(path, e) from None
    dist.barrier()
    log.info("saved checkpoint %s", path)
    return path


def _commit(save_dir: str, path: str, iteration: int, metadata: str) -> None:
    """Rank 0, once every rank's files are complete: the completion marker, then ``latest``."""
    _write_atomic(os.path.join(path, METADATA_FILE), metadata)
    _write_atomic(os.path.join(save_dir, LATEST_FILE), checkpoint_tag(iteration))
    _write_atomic(os.path.join(save_dir, LATEST_ITERATION_FILE), str(iteration))


def lock_save_dir(save_dir: str | None, device: torch.device) -> DirectoryLock | None:
    """Rank 0 takes ``--save``'s lock; every rank raises if it could not (collectively).

    Raises:
        CheckpointError: Another live run holds it (rank 0's message names it).
    """
    if save_dir is None:
        return None
    lock, error = None, None
    if dist.get_rank() == 0:
        try:
            lock = DirectoryLock(save_dir, "--save").acquire()
        except CheckpointError as e:
            error = e
    failed = error is not None
    if dist.get_world_size() > 1:
        flag = torch.tensor([float(failed)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        failed = bool(flag.item())
    if error is not None:
        raise error
    if failed:
        raise CheckpointError(f"--save: {save_dir} is locked by another run (see rank 0's message)")
    return lock


PRE_COOLDOWN_FILE = "pre_cooldown_checkpoint.txt"
_STEP_DIR = re.compile(r"global_step(\d+)")


def prune_checkpoints(save_dir: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` complete checkpoints (rank 0; after a save).

    The checkpoint ``latest`` names and the pre-cooldown one are never deleted; neither is
    anything that is not a ``global_step<N>`` directory (universal conversions, logs).

    Returns:
        The deleted directories.
    """
    if dist.get_rank() != 0:
        return []
    protected = {read_latest_tag(save_dir)}
    pre = os.path.join(save_dir, PRE_COOLDOWN_FILE)
    if os.path.isfile(pre):
        with open(pre) as f:
            protected.add(f.read().strip())
    steps = sorted(
        (int(m.group(1)), entry)
        for entry in os.listdir(save_dir)
        if (m := _STEP_DIR.fullmatch(entry)) and os.path.isfile(os.path.join(save_dir, entry, METADATA_FILE))
    )
    doomed = [entry for _, entry in steps[: max(0, len(steps) - keep)] if entry not in protected]
    for entry in doomed:
        shutil.rmtree(os.path.join(save_dir, entry), ignore_errors=True)
        log.info("--keep-last-n-checkpoints %d: deleted %s", keep, os.path.join(save_dir, entry))
    return doomed


def mark_pre_cooldown(save_dir: str, iteration: int) -> None:
    """Record the checkpoint taken at the last step before the cooldown (LR still at its peak),
    where continual pretraining should start from; it is never overwritten by later saves."""
    if dist.get_rank() == 0:
        tag = checkpoint_tag(iteration)
        _write_atomic(os.path.join(save_dir, PRE_COOLDOWN_FILE), tag)
        log.info("checkpoint before the LR cooldown: %s (recorded in %s); start CPT from it",
                 os.path.join(save_dir, tag), PRE_COOLDOWN_FILE)


def load_engine_states(
    engine: Any, load_dir: str, tag: str, *, weights_only: bool, load_optimizer: bool
) -> dict[str, Any]:
    """Load checkpoint ``tag`` of ``load_dir`` into ``engine``.

    Args:
        engine: The DeepSpeed engine.
        load_dir: ``--load``.
        tag: The checkpoint (``global_step{N}``).
        weights_only: ``--finetune``: model weights only.
        load_optimizer: Restore optimizer states (ignored with ``weights_only``).

    Returns:
        The DeepSpeed ``client_state`` of this rank.

    Raises:
        CheckpointError: DeepSpeed could not load it.
    """
    try:
        path, client_state = engine.load_checkpoint(
            load_dir,
            tag=tag,
            load_optimizer_states=load_optimizer and not weights_only,
            load_lr_scheduler_states=False,
            load_module_only=weights_only,
        )
    except CheckpointError as e:  # a file refused or unreadable: the message names it
        raise CheckpointError(f"--load: cannot load {os.path.join(load_dir, tag)}: {e}") from None
    except (RuntimeError, OSError, KeyError, ValueError, EOFError) as e:
        raise CheckpointError(f"--load: cannot load {os.path.join(load_dir, tag)}: {e}") from e
    if path is None:
        raise CheckpointError(f"--load: DeepSpeed found no checkpoint files in {load_dir}/{tag}")
    log.info("loaded checkpoint %s", path)
    return client_state or {}
