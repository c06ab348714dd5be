"""The masked-diffusion forward process and loss against the spec's oracles
(docs/diffusion.md)."""

from __future__ import annotations

import math

import pytest
import torch

from megatron.data.loader import BatchReader, MockStream
from megatron.model.gpt import token_losses
from megatron.objectives.masking import (
    NoiseOptions,
    diffusion_loss,
    draw_noise,
    masking_probability,
    move_to_suffix,
    noisy_batch,
)


def test_noise_schedule_endpoints():
    t = torch.tensor([0.0, 1.0, 0.5])
    assert masking_probability(t, 1e-3).tolist() == pytest.approx([1e-3, 1.0, 0.5005])


def test_mean_masked_fraction_over_10k_samples():
    t, masked, p = draw_noise(range(10_000), 256, NoiseOptions(seed=3))
    # p ~ U[eps, 1]: mean (1 + eps) / 2 = 0.5005
    assert masked.float().mean().item() == pytest.approx(0.5005, abs=0.01)
    assert t.min() >= 0 and t.max() < 1 and t.mean().item() == pytest.approx(0.5, abs=0.01)
    assert p.tolist() == pytest.approx(masking_probability(t.double(), 1e-3).tolist(), rel=1e-6)
    assert len({tuple(row.tolist()) for row in masked[:64]}) == 64  # masks differ between samples


def test_exact_loss_for_uniform_logits_and_a_fixed_mask(dist_world1):
    V, L = 256, 8
    logits = torch.zeros(1, L, V)
    labels = torch.randint(0, V, (1, L))
    masked = torch.zeros(1, L, dtype=torch.bool)
    masked[0, [1, 4, 6]] = True
    weights = masked.float() / 0.5
    loss = diffusion_loss(token_losses(logits, labels), weights)
    assert loss.item() == pytest.approx(3 * math.log(V) / 0.5 / 8, rel=1e-6)
    assert loss.item() == pytest.approx(4.158883, abs=1e-6)


def test_loss_of_uniform_logits_has_expectation_ln_v():
    # E[count / p] = L, so the expected loss of uniform logits is ln V whatever the mask.
    _, masked, p = draw_noise(range(4000), 64, NoiseOptions(seed=5))
    weights = masked.float() / p[:, None]
    ce = torch.full((4000, 64), math.log(256.0))
    assert diffusion_loss(ce, weights).item() == pytest.approx(math.log(256.0), rel=0.03)


def test_ar_ratio_moves_the_mask_to_the_suffix_and_zero_masks_nothing():
    masked = torch.tensor([[True, False, True, False, False], [False] * 5, [True] * 5])
    moved = move_to_suffix(masked)
    assert moved.tolist() == [
        [False, False, False, True, True],
        [False] * 5,  # the anchor's masked[i, -0:] = True masks the whole row here
        [True] * 5,
    ]
    # Through the forward process: t scaled to ~0 with eps 0 masks nothing, even at ar-ratio 1.
    _, none, _ = draw_noise(range(32), 16, NoiseOptions(seed=1, eps=0.0, t_scale=1e-12, ar_ratio=1.0))
    assert not none.any()
    _, suffix, _ = draw_noise(range(200), 16, NoiseOptions(seed=1, ar_ratio=1.0))
    counts = suffix.sum(1)
    assert (counts > 0).any() and (counts < 16).any()
    assert torch.equal(suffix, move_to_suffix(suffix))
    _, plain, _ = draw_noise(range(200), 16, NoiseOptions(seed=1))
    assert torch.equal(plain.sum(1), counts)  # the same draws, only moved


def test_stratified_draws_tile_the_unit_interval():
    K = 8
    ts = torch.stack([
        draw_noise(range(5), 32, NoiseOptions(seed=2, split="valid", eps=0.0, draw=k, stratified_draws=K))[0]
        for k in range(K)
    ])  # [K, b]
    for sample in ts.T:
        gaps = torch.diff(torch.sort(sample).values)
        assert gaps.tolist() == pytest.approx([1 / K] * (K - 1), abs=1e-6)


def test_low_noise_scale_and_reproducible_draws():
    opts = NoiseOptions(seed=4)
    t, masked, _ = draw_noise([10, 11, 12], 32, opts)
    t2, masked2, _ = draw_noise([10, 11, 12], 32, opts)
    assert torch.equal(t, t2) and torch.equal(masked, masked2)  # a pure function of the indices
    half, _, _ = draw_noise([10, 11, 12], 32, NoiseOptions(seed=4, t_scale=0.5))
    assert half.tolist() == pytest.approx((t * 0.5).tolist())
    other, _, _ = draw_noise([10, 11, 12], 32, NoiseOptions(seed=4, split="valid"))
    assert not torch.equal(t, other)


def test_noisy_batch_labels_are_the_clean_inputs_without_shift():
    reader = BatchReader(MockStream(64, 16, 0), micro_batch_size=4, dp_size=1, dp_rank=0,
                         grad_accum_steps=1, device=torch.device("cpu"))
    clean = reader.micro_batch(0, 0)
    batch = noisy_batch(clean, reader.sample_indices(0, 0), 100, NoiseOptions(seed=0))
    masked = batch.loss_mask > 0
    assert torch.equal(batch.labels, clean.tokens)
    assert torch.equal(batch.tokens[~masked], clean.tokens[~masked])
    assert (batch.tokens[masked] == 100).all()
    p = masking_probability(batch.noise_t, 1e-3)
    assert batch.loss_mask[masked].tolist() == pytest.approx(
        (1 / p[:, None].expand_as(masked))[masked].tolist(), rel=1e-5)
