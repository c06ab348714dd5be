"""Micro-batches for (step, micro-step, data-parallel rank), read straight from a stream.

A step that starts after ``c`` consumed samples reads stream samples ``[c, c + G)``; micro-step
``m`` of DP rank ``r`` takes ``micro`` consecutive samples from ``c + m * micro * dp + r * micro``.
So the samples of a step do not depend on how they are split into micro-batches and ranks
(1x4 accumulation sees what 4x1 sees), ranks never share a sample, and the data position is
just the consumed-sample count: a resumed run reads its next sample directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class Batch:
    """One micro-batch.

    Attributes:
        tokens: Inputs ``[b, s]``.
        labels: Next tokens ``[b, s]``.
        loss_mask: True where the loss counts ``[b, s]`` (bool: ``~`` must mean logical not).
        dataset_ids: Which dataset of the blend each sample came from ``[b]``.
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    dataset_ids: torch.Tensor


class MockStream:
    """Synthetic, learnable samples: counting sequences ``(b + t) mod V`` from a random start.

    The start ``b`` of each sample comes from (seed, index); the next token is always the
    previous one plus one, which even a tiny model learns in a few steps: the loss falls fast,
    which is what smoke tests need.
    """

    def __init__(self, vocab_size: int, seq_length: int, seed: int):
        self.vocab_size = vocab_size
        self.seq_length = seq_length
        self.seed = seed

    def __getitem__(self, index: int) -> tuple[int, np.ndarray]:
        start = np.random.default_rng([self.seed, 7, int(index)]).integers(0, self.vocab_size)
        return 0, (start + np.arange(self.seq_length + 1, dtype=np.int64)) % self.vocab_size


def collate_rows(rows: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples into tokens ``[b, s + 1]`` and a bool trainable mask ``[b, s + 1]``.

    A sample is a token row, or ``[tokens, trainable]`` (``[2, s + 1]``) when its dataset has a
    loss mask (metadata prefixes); rows of both kinds may share a micro-batch (blends).
    """
    if all(row.ndim == 1 for row in rows):
        tokens = torch.from_numpy(np.stack(rows))
        return tokens, torch.ones(tokens.shape, dtype=torch.bool)
    tokens = np.stack([row[0] if row.ndim == 2 else row for row in rows])
    trainable = np.stack([row[1] != 0 if row.ndim == 2 else np.ones(row.shape, bool) for row in rows])
    return torch.from_numpy(tokens), torch.from_numpy(trainable)


class BatchReader:
    """Reads this rank's micro-batches of a stream.

    Args:
        stream: ``stream[i] -> (dataset_id, tokens of length seq + 1)``.
        micro_batch_size: Samples per micro-batch.
        dp_size: Data-parallel size.
        dp_rank: This rank's data-parallel index.
        grad_accum_steps: Micro-batches per step.
        device: Where batches go.
    """

    def __init__(
        self,
        stream,
        *,
        micro_batch_size: int,
        dp_size: int,
        dp_rank: int,
        grad_accum_steps: int,
        device: torch.device,
    ):
        self.stream = stream
        self.micro = micro_batch_size
        self.dp_size = dp_size
        self.dp_rank = dp_rank
        self.accum = grad_accum_steps
        self.device = device

    @property
    def global_batch_size(self) -> int:
        """Samples per step over all ranks."""
        return self.micro * self.dp_size * self.accum

    def sample_indices(self, consumed: int, micro_step: int) -> range:
        """Stream indices of this rank's micro-batch ``micro_step`` of the step at ``consumed``."""
        start = consumed + micro_step * self.micro * self.dp_size + self.dp_rank * self.micro
        return range(start, start + self.micro)

    def micro_batch(self, consumed: int, micro_step: int) -> Batch:
        """Read and collate one micro-batch."""
        indices = self.sample_indices(consumed, micro_step)
        ids, rows = zip(*(self.stream[i] for i in indices), strict=True)
        samples, trainable = collate_rows(rows)
        pin = self.device.type == "cuda"
        batch = Batch(
            tokens=samples[:, :-1],
            labels=samples[:, 1:],
            # Label j is token j + 1: it counts when that token is trainable (not metadata).
            loss_mask=trainable[:, 1:],
            dataset_ids=torch.tensor(ids, dtype=torch.long),
        )
        if self.device.type == "cpu":
            return batch
        return Batch(
            *(
                (t.contiguous().pin_memory() if pin else t).to(self.device, non_blocking=True)
                for t in (batch.tokens, batch.labels, batch.loss_mask, batch.dataset_ids)
            )
        )

    def step_batches(self, consumed: int) -> list[Batch]:
        """This rank's micro-batches of the step that starts after ``consumed`` samples."""
        return [self.micro_batch(consumed, m) for m in range(self.accum)]
