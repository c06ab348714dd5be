"""``ParallelContext``: where this process sits (device, backend, TP/PP/DP coordinates).

Its own module so that the registries' typed hooks (``megatron.optimizer.host``) can name it
without importing the process-group setup, which takes the run plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron.config.env import DistEnv


@dataclass(frozen=True, kw_only=True, slots=True)
class ParallelContext:
    """Where this process sits.

    Attributes:
        env: The launcher's view.
        device: This rank's device.
        backend: torch.distributed backend in use.
        tp_rank, tp_size, pp_rank, pp_size, dp_rank, dp_size: Coordinates and sizes.
        sp_rank, sp_size: DeepSpeed-Ulysses coordinate and size (1 = off).
    """

    env: DistEnv
    device: torch.device
    backend: str
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    sp_rank: int = 0
    sp_size: int = 1

    @property
    def zero_dp_rank(self) -> int:
        """Index among the ranks that hold the same parameters (DP x SP): ZeRO's partition."""
        return self.dp_rank * self.sp_size + self.sp_rank

    @property
    def zero_dp_size(self) -> int:
        """Ranks that hold the same parameters (DP x SP)."""
        return self.dp_size * self.sp_size

    @property
    def is_first_stage(self) -> bool:
        """First pipeline stage (reads tokens)."""
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        """Last pipeline stage (computes the loss)."""
        return self.pp_rank == self.pp_size - 1

    @property
    def is_logging_rank(self) -> bool:
        """The rank that prints and writes TensorBoard: TP 0, DP 0, SP 0 of the last stage."""
        return self.is_last_stage and self.tp_rank == 0 and self.zero_dp_rank == 0
