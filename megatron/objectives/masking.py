"""The masked-diffusion forward process and loss (torch).

Per sample: t ~ U(0, 1), masking probability p = (1 - eps) t + eps, each position masked
independently with probability p and replaced by the mask token; labels are the clean tokens
(no shift). The loss is sum over masked positions of CE / p, divided by B * L (all positions):
an upper bound on the per-token negative log-likelihood (Nie et al., arXiv 2410.18514, eq. 3).

Randomness is a pure function of (seed, split, stream index of the sample, draw): the same
sample gets the same t and mask whatever the data-parallel, tensor or pipeline layout, on every
rank that needs it (the first and the last pipeline stage compute it independently), and a
resumed run draws exactly what the uninterrupted run would. A sample repeated in a later epoch
has another stream index, so it gets fresh noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megatron.data.loader import Batch

SPLIT_SALT = {"train": 0, "valid": 1, "test": 2}


@dataclass(frozen=True, slots=True)
class NoisyBatch(Batch):
    """A masked-diffusion micro-batch: ``tokens`` are the masked inputs, ``labels`` the clean
    tokens, ``loss_mask`` the per-position loss weights m / p (0 where unmasked).

    Attributes:
        noise_t: The diffusion time t of each sample ``[b]``.
    """

    noise_t: torch.Tensor


@dataclass(frozen=True, slots=True)
class NoiseOptions:
    """How to draw (t, mask) for one batch.

    Attributes:
        seed: Run seed.
        split: ``train``, ``valid`` or ``test`` (separate streams).
        eps: Masking-probability floor.
        t_scale: Factor on t (``--low-noise-start``: ``--low-noise-ratio`` early in training).
        ar_ratio: Probability of moving a sample's mask to its last positions.
        draw: Evaluation draw k (0 in training).
        stratified_draws: K for stratified t = (u0 + k/K) mod 1, or None for independent t.
    """

    seed: int
    split: str = "train"
    eps: float = 1e-3
    t_scale: float = 1.0
    ar_ratio: float = 0.0
    draw: int = 0
    stratified_draws: int | None = None


def sample_generator(seed: int, split: str, index: int, draw: int) -> torch.Generator:
    """The generator of one sample's noise: a pure function of its coordinates."""
    state = np.random.SeedSequence([seed, 0x6D646D, SPLIT_SALT[split], int(index), int(draw)])
    return torch.Generator().manual_seed(int(state.generate_state(1, np.uint64)[0] >> 1))


def masking_probability(t: torch.Tensor, eps: float) -> torch.Tensor:
    """p = (1 - eps) t + eps."""
    return (1.0 - eps) * t + eps


def move_to_suffix(masked: torch.Tensor) -> torch.Tensor:
    """Keep each row's masked count k and mask exactly its last k positions (k = 0: none).

    The anchor writes ``masked[i, -k:] = True``, which for k = 0 is ``[-0:]``: the whole row.
    """
    length = masked.shape[-1]
    counts = masked.sum(dim=-1, keepdim=True)
    return torch.arange(length, device=masked.device) >= (length - counts)


def draw_noise(
    indices: range | list[int], length: int, opts: NoiseOptions
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t ``[b]``, masked ``[b, L]`` bool, p ``[b]``) for the samples at stream ``indices``."""
    ts, rows, suffix = [], [], []
    for index in indices:
        g = sample_generator(opts.seed, opts.split, index, opts.draw)
        u = torch.rand(length + 2, generator=g, dtype=torch.float64)
        if opts.stratified_draws is None:
            t = u[0].item()
        else:
            u0 = torch.rand(1, generator=sample_generator(opts.seed, opts.split, index, 0),
                            dtype=torch.float64).item()
            t = (u0 + opts.draw / opts.stratified_draws) % 1.0
        ts.append(t * opts.t_scale)
        suffix.append(bool(u[1].item() < opts.ar_ratio))
        rows.append(u[2:])
    t = torch.tensor(ts, dtype=torch.float64)
    p = masking_probability(t, opts.eps)
    masked = torch.stack(rows) < p[:, None]
    moved = torch.tensor(suffix)
    if moved.any():
        masked = torch.where(moved[:, None], move_to_suffix(masked), masked)
    return t.float(), masked, p.float()


def noisy_batch(batch: Batch, indices: range | list[int], mask_id: int, opts: NoiseOptions) -> NoisyBatch:
    """A masked-diffusion micro-batch from an autoregressive one (its ``tokens`` are the clean
    first ``seq_length`` tokens of each sample)."""
    clean = batch.tokens
    t, masked, p = draw_noise(indices, clean.shape[1], opts)
    masked, t, p = masked.to(clean.device), t.to(clean.device), p.to(clean.device)
    # p > 0 wherever a position is masked (u < p), so the weights are finite.
    weights = masked.float() / p.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    return NoisyBatch(
        tokens=torch.where(masked, torch.full_like(clean, mask_id), clean),
        labels=clean,
        loss_mask=weights,
        dataset_ids=batch.dataset_ids,
        noise_t=t,
    )


def diffusion_loss(token_losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(CE * m / p) / (B * L): the per-token negative-ELBO estimate of one micro-batch
    (under Ulysses, this rank's share: L is the whole sequence of the SP group)."""
    from megatron.model.ulysses import sp_size

    return (token_losses * weights).sum() / (weights.numel() * sp_size())
