"""Per-step values (the training loss) kept on the device until someone reads them.

Reading a CUDA tensor on the host (``float(t)``, ``t.item()``) waits for every kernel queued
before it, so a loop that reads the loss each step cannot queue step n+1 while step n runs.
The loop appends each step's loss tensor here and flushes at log intervals: one device-to-host
copy of the interval's losses, the same floats ``float(loss)`` would have given each step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class StepValues:
    """A list of floats whose newest entries may still be device tensors."""

    def __init__(self) -> None:
        self._floats: list[float] = []
        self._pending: list[torch.Tensor | float] = []

    def append(self, value: torch.Tensor | float) -> None:
        """Add one step's value (a 0-d tensor stays on its device)."""
        self._pending.append(value.detach() if isinstance(value, torch.Tensor) else value)

    def flush(self) -> None:
        """Copy the pending values to the host (one transfer for the tensors among them)."""
        if not self._pending:
            return
        tensors = [v for v in self._pending if isinstance(v, torch.Tensor)]
        # float64 holds every float32/bf16 value exactly: the floats equal float(v) one by one.
        host = iter(torch.stack([t.to(torch.float64) for t in tensors]).tolist() if tensors else [])
        self._floats += [next(host) if isinstance(v, torch.Tensor) else float(v) for v in self._pending]
        self._pending = []

    def __len__(self) -> int:
        return len(self._floats) + len(self._pending)

    def __getitem__(self, index: int) -> float:
        self.flush()
        return self._floats[index]

    def __iter__(self) -> Iterator[float]:
        self.flush()
        return iter(list(self._floats))
