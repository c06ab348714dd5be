"""When to stop early: SIGTERM, a kill-switch file, an exit interval, a time budget.

Every rank must stop at the same step (or collectives hang), so the local observations are
combined with one MAX all-reduce per step.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import torch
import torch.distributed as dist

from megatron.checkpointing.lifecycle import consume_kill_switch
from megatron.config.train import TrainConfig

log = logging.getLogger(__name__)

REASONS = ("SIGTERM received", "kill-switch file found", "exit duration reached")


class StopSignals:
    """Watches for a reason to save and exit.

    Args:
        cfg: The train section (kill switch, exit interval, exit duration).
        device: Where the flags are reduced (CUDA for NCCL).
    """

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.started = time.monotonic()
        self._sigterm = False
        self._previous_handler = None
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        # Only set a flag: the loop saves at the next step boundary, on every rank together.
        self._sigterm = True

    def check(self, iteration: int) -> str | None:
        """The reason to stop after ``iteration`` steps, agreed by all ranks, or None."""
        local = [
            self._sigterm,
            bool(self.cfg.kill_switch_file and os.path.exists(self.cfg.kill_switch_file)),
            bool(
                self.cfg.exit_duration_in_mins
                and time.monotonic() - self.started > 60.0 * self.cfg.exit_duration_in_mins
            ),
        ]
        if dist.is_initialized() and dist.get_world_size() > 1:
            # One tiny all-reduce per step (and a host read of it): the ranks must agree.
            flags = torch.tensor([float(x) for x in local], device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            local = [bool(f) for f in flags.tolist()]
        # One process: no device tensor at all (its host read would wait for the step's kernels).
        for reason, flag in zip(REASONS, local, strict=True):
            if flag:
                return reason
        if self.cfg.exit_interval and iteration % self.cfg.exit_interval == 0:
            return f"exit interval {self.cfg.exit_interval} reached"
        return None

    def close(self) -> None:
        """Restore the previous SIGTERM handler."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)


def kill_switch_at_start(path: str | None, device: torch.device) -> bool:
    """True when the kill switch exists as the run starts (on any rank); rank 0 removes it.

    The run then does not start and exits 0: a job chain whose previous job stopped on the kill
    switch ends here (``megatron/checkpointing/lifecycle.py``).
    """
    if not path:
        return False
    present = os.path.exists(path)
    if dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([float(present)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank has looked before rank 0 removes
        present = bool(flag.item())
    if not present:
        return False
    if not dist.is_initialized() or dist.get_rank() == 0:
        consume_kill_switch(path)
    return True
