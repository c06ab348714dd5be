"""Peak bytes of the tensors that operations allocate, measured on any device (CPU included).

``torch.cuda.max_memory_allocated`` has no CPU counterpart; this meter is a
``TorchDispatchMode`` that counts each new output storage of every operation run under it
(forward, and the autograd backward started inside it) while the storage is alive, and records
the largest total. Tensors that existed before the meter was entered (weights, inputs) and
in-place results are not counted, so the number is the working memory of the measured code:
for the loss benchmark, its logits, softmax and the gradients it returns. It counts storage
bytes as torch sees them, not the allocator's rounding or fragmentation.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorMemory(TorchDispatchMode):
    """``with PeakTensorMemory() as m: ...`` then ``m.peak_bytes`` (and ``m.live_bytes``)."""

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._alive: set[int] = set()

    def _freed(self, key: int, nbytes: int) -> None:
        self._alive.discard(key)
        self.live_bytes -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._alive or key in inputs:  # a view or an in-place result
                continue
            self._alive.add(key)
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(storage, self._freed, key, nbytes)
        return out
