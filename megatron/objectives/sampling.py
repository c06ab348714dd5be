"""Sampling text from a model: masked-diffusion reveal (``mdm``) and left-to-right (``ar``).

Masked diffusion (Nie et al., arXiv 2410.18514; Shi et al./Sahoo et al. for the reverse
process): start from ``[prompt, MASK x n]`` and walk t from 1 to ``eps`` in ``steps`` equal
steps. At each step the model predicts every masked position (Gumbel-max at a temperature;
argmax at temperature 0) and some of them are revealed:

- ``origin``: each still-masked position independently with probability 1 - s/t (the exact
  reverse of the forward process from t to s); at the last step all of them;
- ``confidence``: the most confident predictions, a fixed number per step (the n masked
  positions split evenly over the steps: with steps = n exactly one per step).

Revealed and prompt tokens never change. Classifier-free guidance (``cfg_scale`` w > 0) mixes
the prompted logits c with logits u of the same input with its prompt masked too:
u + (w + 1)(c - u). Ids at and above ``vocab_limit`` (the mask token and the padding rows) are
never sampled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """A sample of softmax(logits / T) by the Gumbel-max trick in float64; argmax at T = 0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).clamp_(min=1e-300)
    return (logits.double() / temperature - torch.log(-torch.log(u))).argmax(dim=-1)


def _limit(logits: torch.Tensor, vocab_limit: int) -> torch.Tensor:
    logits = logits.double().clone()
    logits[..., vocab_limit:] = -torch.inf
    return logits


def reveal_counts(masked: int, steps: int) -> list[int]:
    """How many positions ``confidence`` reveals at each step: ``masked`` split evenly."""
    base, extra = divmod(masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def mdm_sample(
    logits_fn: LogitsFn,
    prompt: torch.Tensor,
    *,
    gen_length: int,
    steps: int,
    mask_id: int,
    vocab_limit: int,
    alg: Literal["origin", "confidence"] = "origin",
    temperature: float = 1.0,
    cfg_scale: float = 0.0,
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[b, P + gen_length]`` tokens: the prompt ``[b, P]`` followed by revealed tokens.

    ``logits_fn(tokens [b, s]) -> [b, s, V]`` is the bidirectional model.
    """
    b, plen = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), mask_id, dtype=prompt.dtype)], dim=1)
    times = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
    counts = reveal_counts(gen_length, steps)
    for i in range(steps):
        masked = x == mask_id
        masked[:, :plen] = False
        if not masked.any():
            break
        logits = logits_fn(x)
        if cfg_scale > 0:
            unprompted = x.clone()
            unprompted[:, :plen] = mask_id
            uncond = logits_fn(unprompted)
            logits = uncond + (cfg_scale + 1.0) * (logits - uncond)
        logits = _limit(logits, vocab_limit)
        x0 = gumbel_argmax(logits, temperature, generator).to(x.dtype)
        if alg == "origin":
            last = i == steps - 1
            keep_masked = float(times[i + 1] / times[i])
            coin = torch.rand(masked.shape, generator=generator, dtype=torch.float64)
            reveal = masked if last else masked & (coin < 1.0 - keep_masked)
        elif alg == "confidence":
            confidence = torch.softmax(logits, dim=-1).gather(-1, x0[..., None].long())[..., 0]
            confidence = confidence.masked_fill(~masked, -1.0)
            reveal = torch.zeros_like(masked)
            k = counts[i] if i < steps - 1 else gen_length
            for row in range(b):
                n = min(k, int(masked[row].sum()))
                reveal[row, confidence[row].topk(n).indices] = True
        else:
            raise ValueError(f"--alg: unknown reveal order {alg!r}; use origin or confidence")
        x = torch.where(reveal, x0, x)
    return x


def ar_sample(
    logits_fn: LogitsFn,
    prompt: torch.Tensor,
    *,
    gen_length: int,
    vocab_limit: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[b, P + gen_length]`` tokens: left-to-right sampling from a causal model (no KV cache)."""
    x = prompt
    for _ in range(gen_length):
        logits = _limit(logits_fn(x)[:, -1], vocab_limit)
        x = torch.cat([x, gumbel_argmax(logits, temperature, generator)[:, None].to(x.dtype)], dim=1)
    return x
