"""``--objective mdm``: masked diffusion (bidirectional attention, negative-ELBO loss).

Training: per sample t ~ U(0, 1) (times ``--low-noise-ratio`` during ``--low-noise-start``),
p = (1 - eps) t + eps, each token masked with probability p; optionally (``--ar-ratio``) the mask
moves to the last k positions. Loss = sum over masked positions of CE / p, divided by B * L.
Evaluation averages ``--num-mc`` draws of (t, mask) of the same samples (stratified t and
eps = 0 with ``--mdm-eval-stratified``). The value is the negative ELBO per token, an upper
bound on the NLL; exp of it is a perplexity bound, never an autoregressive perplexity.
"""

from __future__ import annotations

from typing import Any

from megatron.config.fields import ConfigError
from megatron.config.objective import AUTO
from megatron.objectives.registry import register_objective


def _spare_row_divisor(vocab: int, divisor: int) -> int:
    """The smallest ``divisor * 2^j`` that pads ``vocab`` to at least one spare row."""
    while vocab % divisor == 0:
        divisor *= 2
    return divisor


def mask_token_id(cfg: Any, spec: Any) -> int:
    """The mask token: ``--mdm-mask-token-id``, or the first spare padded row (``auto``).

    Raises:
        ConfigError: No spare row, or an id that a real token uses or the model does not have.
    """
    vocab, padded = spec.original_vocab_size, spec.vocab_size
    choice = cfg.objective.mdm_mask_token_id
    if choice == AUTO:
        if padded <= vocab:
            divisor = _spare_row_divisor(vocab, cfg.model.make_vocab_size_divisible_by)
            raise ConfigError(
                f"--objective: mdm needs a mask token that no real token uses, but the padded "
                f"vocabulary ({padded} rows) has no row beyond the tokenizer's {vocab} ids; pad "
                f"it with --make-vocab-size-divisible-by {divisor} (a multiple of the TP size)"
            )
        return vocab
    token = int(choice)
    if not vocab <= token < padded:
        raise ConfigError(
            f"--mdm-mask-token-id: {token} is not a spare row: real tokens use 0..{vocab - 1} and "
            f"the padded vocabulary has {padded} rows; use a value in [{vocab}, {padded}) or auto"
        )
    return token


def check_mdm(cfg: Any, spec: Any) -> None:
    """Flags masked diffusion cannot honour."""
    mask_token_id(cfg, spec)


def _batches(plan: Any, reader: Any, consumed: int, *, iteration: int, split: str, draw: int) -> list:
    from megatron.objectives.masking import NoiseOptions, noisy_batch

    o = plan.config.objective
    training = split == "train"
    stratified = not training and o.mdm_eval_stratified
    opts = NoiseOptions(
        seed=plan.config.train.seed,
        split=split,
        eps=0.0 if stratified else o.mdm_eps,
        t_scale=o.low_noise_ratio if training and o.low_noise_start and iteration < o.low_noise_iter else 1.0,
        ar_ratio=o.ar_ratio if training else 0.0,  # evaluation measures the plain bound
        draw=draw,
        stratified_draws=o.num_mc if stratified else None,
    )
    mask_id = mask_token_id(plan.config, plan.model)
    return [
        noisy_batch(batch, reader.sample_indices(consumed, m), mask_id, opts)
        for m, batch in enumerate(reader.step_batches(consumed))
    ]


def _reduce(losses: Any, weights: Any) -> Any:
    from megatron.objectives.masking import diffusion_loss

    return diffusion_loss(losses, weights)


def _meter_add(meter: Any, losses: Any, weights: Any, dataset_ids: Any) -> None:
    import torch

    # Weighted losses over every position: each corpus's sum / count is its per-token bound.
    meter.add(losses * weights, torch.ones_like(weights), dataset_ids)


def _step_stats(batches: list) -> dict[str, float]:
    import torch

    t = torch.cat([b.noise_t for b in batches])
    masked = torch.cat([(b.loss_mask > 0).float().flatten() for b in batches])
    return {"mdm_mean_t": float(t.mean()), "mdm_masked_fraction": float(masked.mean())}


mdm_batches = register_objective(
    "mdm",
    causal=False,
    reduce=_reduce,
    meter_add=_meter_add,
    check=check_mdm,
    eval_draws=lambda cfg: cfg.objective.num_mc,
    step_stats=_step_stats,
    train_metric="mdm_nelbo",
    eval_metric="mdm_nelbo",
    ppl_metric="ppl_bound",
    eval_label="negative ELBO per token (upper bound on the NLL)",
    attention_flops="full (non-causal) attention: 12*L*d*s per token, all of it computed",
)(_batches)
