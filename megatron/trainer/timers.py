"""Per-phase step timings for ``--log-timers-to-tensorboard``: data, forward, backward, optimizer.

Megatron users read these to see where a step's time goes. A phase is timed with the device
synchronized at both ends (kernels run asynchronously, so without it the time of a phase would
land in whichever later phase first waits), which is why timing is off unless asked for. Under
pipeline parallelism DeepSpeed interleaves forward and backward inside ``train_batch``, so only
``data`` and the whole ``step`` are timed there.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from megatron.distributed.backend import synchronize


class PhaseTimers:
    """Accumulates seconds per phase; ``collect`` returns mean ms per step and resets.

    Args:
        enabled: Time anything at all (otherwise every ``phase`` is a bare ``yield``).
        device: Synchronized around each phase when it is a CUDA device.
    """

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps = 0

    def _sync(self) -> None:
        synchronize(self.device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body as phase ``name`` (added to the phase's total of this window)."""
        if not self.enabled:
            yield
            return
        self._sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - started

    def step_done(self) -> None:
        """Count one optimizer step (the denominator of ``collect``)."""
        if self.enabled:
            self.steps += 1

    def collect(self) -> dict[str, float]:
        """Mean milliseconds per step of each phase since the last call; then reset."""
        if not self.enabled or self.steps == 0:
            return {}
        out = {name: 1000.0 * total / self.steps for name, total in self.seconds.items()}
        self.seconds = defaultdict(float)
        self.steps = 0
        return out
