"""Trainable tokens count positions that carry a loss, whatever the loss weights are."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from megatron.trainer.token_counts import TokenCounter


def test_mdm_weights_count_masked_positions_not_their_sum():
    counter = TokenCounter(torch.device("cpu"), tokens_per_step=16)
    weights = torch.zeros(2, 8)
    weights[0, :3] = 4.0  # 1/t with t = 0.25: three masked positions
    weights[1, 2:7] = 1.25  # t = 0.8: five masked positions
    counter.add([SimpleNamespace(loss_mask=weights)])
    assert counter.collect() == (8, 16)


def test_ar_mask_counts_its_ones():
    counter = TokenCounter(torch.device("cpu"), tokens_per_step=8)
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    counter.add([SimpleNamespace(loss_mask=mask)])
    counter.add([SimpleNamespace(loss_mask=mask)])
    assert counter.collect() == (14, 16)
    assert (counter.trainable_total, counter.consumed_total) == (14, 16)
