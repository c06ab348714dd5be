"""Loss per corpus: token-loss sums and token counts per dataset, reduced once per report.

Every rank adds what it computed; one SUM all-reduce over the world combines them. Ranks that
hold a copy of the same numbers (tensor-parallel peers) add both the loss and the token count
again, and pipeline stages without the loss add zeros, so sum / count is the mean over the
step's tokens whatever the layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


class CorpusLoss:
    """Accumulates per-dataset loss sums on the device until ``collect``.

    Args:
        num_datasets: Dataset ids are ``0..num_datasets-1``.
        device: Where the sums live.
    """

    def __init__(self, num_datasets: int, device: torch.device):
        self.sums = torch.zeros(2, num_datasets, dtype=torch.float64, device=device)

    def add(self, token_losses: torch.Tensor, loss_mask: torch.Tensor, dataset_ids: torch.Tensor) -> None:
        """Add a micro-batch: per-token losses and mask ``[b, s]``, dataset id per sample ``[b]``."""
        mask = loss_mask.to(torch.float64)
        per_sample = (token_losses.detach().to(torch.float64) * mask).sum(dim=1)
        ids = dataset_ids.to(self.sums.device)
        self.sums[0].index_add_(0, ids, per_sample)
        self.sums[1].index_add_(0, ids, mask.sum(dim=1))

    def collect(self, corpora: Sequence[str]) -> dict[str, float]:
        """Mean loss per corpus since the last collect (all ranks must call it); then reset."""
        sums = self.sums.clone()
        self.sums.zero_()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
        totals: dict[str, list[float]] = {}
        for name, loss, count in zip(corpora, sums[0].tolist(), sums[1].tolist(), strict=True):
            entry = totals.setdefault(name, [0.0, 0.0])
            entry[0] += loss
            entry[1] += count
        return {name: loss / count for name, (loss, count) in totals.items() if count > 0}
