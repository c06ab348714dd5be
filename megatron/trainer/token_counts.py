"""Trainable tokens vs consumed tokens (metadata prefixes occupy context but are not targets).

Every rank adds the loss-mask count of the micro-batches it read; at each report one SUM
all-reduce over the data-parallel group gives the step's trainable tokens (tensor-parallel
peers and pipeline stages read the same samples as their data-parallel rank, so the DP group
alone counts each sample once).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron.data.loader import Batch

log = logging.getLogger(__name__)


class TokenCounter:
    """Counts trainable label positions on the device until ``collect``.

    Args:
        device: Where the count lives.
        tokens_per_step: Consumed (label) tokens per optimizer step over all ranks.
    """

    def __init__(self, device: torch.device, tokens_per_step: int):
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.tokens_per_step = tokens_per_step
        self.steps = 0
        self.trainable_total = 0
        self.consumed_total = 0

    def add(self, batches: list[Batch]) -> None:
        """Add this rank's micro-batches of one step."""
        for batch in batches:
            # Positions that carry a loss: the mask is 0/1 for next-token prediction but holds
            # the 1/t weights of masked diffusion, whose sum is not a token count.
            self.count += (batch.loss_mask > 0).sum()
        self.steps += 1

    def collect(self) -> tuple[int, int]:
        """(trainable, consumed) tokens since the last collect (all ranks must call it)."""
        count = self.count.clone()
        self.count.zero_()
        if dist.is_initialized() and parallel_state.model_parallel_is_initialized():
            group = parallel_state.get_data_parallel_group(with_context_parallel=True)  # + Ulysses
            if dist.get_world_size(group) > 1:
                dist.all_reduce(count, group=group)
        trainable, consumed = int(count.item()), self.steps * self.tokens_per_step
        self.steps = 0
        self.trainable_total += trainable
        self.consumed_total += consumed
        return trainable, consumed

    def report(self, reporter, iteration: int) -> None:  # noqa: ANN001  (trainer.metrics.Reporter)
        """Log and write to TensorBoard the counts of the last interval and since the start."""
        trainable, consumed = self.collect()
        if not reporter.active:
            return
        if trainable != consumed or self.trainable_total != self.consumed_total:
            log.info(
                "tokens: %s trainable of %s consumed (%.1f%%) this interval; %s of %s since start",
                f"{trainable:,}",
                f"{consumed:,}",
                100 * trainable / max(consumed, 1),
                f"{self.trainable_total:,}",
                f"{self.consumed_total:,}",
            )
        reporter.scalar("train/trainable_tokens", self.trainable_total, iteration)
        reporter.scalar("train/consumed_tokens", self.consumed_total, iteration)
        reporter.scalar("train/trainable_fraction", trainable / max(consumed, 1), iteration)
