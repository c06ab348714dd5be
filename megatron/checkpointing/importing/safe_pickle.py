"""Load another framework's ``.pt`` files without running its code.

Megatron-DeepSpeed pickles more than tensors: the run's ``argparse.Namespace`` (whose values may
include paths), NumPy's random state, and DeepSpeed's ``fragment_address`` / loss-scaler records
in its optimizer files.
``torch.load(weights_only=True)`` refuses every global outside an allow-list; ours adds exactly
those records. DeepSpeed's classes are replaced by inert stand-ins registered under their pickled
names, so nothing of DeepSpeed (or anything else) is imported or executed while unpickling.
Any other global is refused with a one-line error naming the file and the global.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import types
from typing import Any

from megatron.checkpointing.metadata import CheckpointError


class PickledRecord:
    """Inert stand-in for a pickled data class of DeepSpeed: keeps its attributes, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state


class FragmentAddress(PickledRecord):
    """``deepspeed.utils.tensor_fragment.fragment_address``: ``numel`` elements from ``start``."""

    numel: int
    start: int


# Pickled name -> stand-in: records only (attributes), never behaviour.
DEEPSPEED_RECORDS: dict[str, type] = {
    "deepspeed.utils.tensor_fragment.fragment_address": FragmentAddress,
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": PickledRecord,
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler": PickledRecord,
    "deepspeed.runtime.zero.config.ZeroStageEnum": PickledRecord,
}


def _allowed() -> list[Any]:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    allowed: list[Any] = [
        argparse.Namespace,
        types.SimpleNamespace,
        # Paths in the args (a path object is inert data), under both pickled module names.
        (pathlib.PosixPath, "pathlib.PosixPath"),
        (pathlib.PosixPath, "pathlib._local.PosixPath"),
        # NumPy's random state (``np.random.get_state()`` in the run's RNG state).
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]
    allowed += [(cls, name) for name, cls in DEEPSPEED_RECORDS.items()]
    return allowed


def load_pt(path: str, *, mmap: bool = True) -> Any:
    """``torch.load`` of ``path`` on CPU with ``weights_only=True`` and our allow-list.

    Memory-mapped when the file's format allows, so opening a file reads no tensor data.

    Raises:
        CheckpointError: A global outside the allow-list (the file is refused, never executed),
            or an unreadable file.
    """
    import pickle

    import torch

    with torch.serialization.safe_globals(_allowed()):
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as e:
                if not mmap or "mmap" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy format
        except pickle.UnpicklingError as e:
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            what = f"the global {found.group(1)}" if found else "an object"
            raise CheckpointError(
                f"{path}: refused: it pickles {what}, which is not on the allow-list of plain "
                "data (tensors, argparse.Namespace, NumPy arrays, DeepSpeed's records); it was "
                "not unpickled"
            ) from None
        except (RuntimeError, OSError, EOFError, ValueError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"{path}: unreadable ({reason}); the file is truncated or corrupt") from None
