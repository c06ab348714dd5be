"""Every checkpoint file is read with ``torch.load(weights_only=True)`` and an explicit allow-list.

A ``.pt`` file is a pickle: loaded with ``weights_only=False`` it can run any code its author
chose. Our files hold tensors, numbers, strings, containers and NumPy's RNG state; DeepSpeed's
add the few classes below. Anything else is refused, naming the file and the global it asked for, and is
never constructed or called.

Two doors, both here: ``load_file`` (our reader, conversion, export, universal checkpoints) and
``safe_checkpoint_engine`` (DeepSpeed's own loads during ``--load``: model, ZeRO and pipeline
files go through its checkpoint engine's ``load``), which the trainer applies to its engine.
"""

from __future__ import annotations

import pickle
import re
from typing import Any

import torch

from megatron.checkpointing.metadata import CheckpointError

# module.qualname of every non-builtin global a checkpoint of ours may contain (DeepSpeed pickles
# its loss scaler, ZeRO stage enum and parameter fragment addresses into optimizer files).
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def _numpy_globals() -> list[Any]:
    """What NumPy's legacy RNG state (``np.random.get_state()``, saved with every checkpoint of
    ours) needs: its uint32 key array. Listed here rather than relied upon from whoever imported
    first (megatron-core registers them process-wide on some imports, so without this list a
    resume worked or failed depending on import order)."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct  # NumPy 2
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def allowed_globals() -> list[Any]:
    """The allow-list as objects (importing DeepSpeed's modules that define them)."""
    import importlib

    found = _numpy_globals()
    for name in DEEPSPEED_GLOBALS:
        module, attr = name.rsplit(".", 1)
        found.append(getattr(importlib.import_module(module), attr))
    return found


def load_file(path: str, *, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` of a checkpoint file with ``weights_only=True`` and the allow-list.

    Raises:
        CheckpointError: The file needs a global outside the allow-list (refused, not executed),
            or it is truncated or corrupt.
    """
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location=map_location, mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load: {_refusal(e)}; a checkpoint holds only tensors "
                              "and plain values, so this file was not written by this framework or "
                              "DeepSpeed (it may carry code)") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); the checkpoint is truncated or corrupt") from None


def _refusal(error: Exception) -> str:
    """The one useful clause of torch's long message: which global the file asked for."""
    text = str(error)
    match = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed global.*)?$", text, re.M)
    if match:
        return match.group(1).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def safe_checkpoint_engine(engine: Any) -> None:
    """Make DeepSpeed's engine load every file through ``load_file`` (whatever checkpoint engine
    it uses for saving: torch, async, decoupled)."""

    def load(path: str, map_location: Any = None) -> Any:
        return load_file(path, map_location=map_location)

    engine.checkpoint_engine.load = load
