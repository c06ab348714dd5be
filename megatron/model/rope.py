"""Rotary position embeddings (Su et al., 2021, https://arxiv.org/abs/2104.09864), in the
rotate-half layout that Llama-style checkpoints use."""

from __future__ import annotations

import torch

_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def rope_tables(
    length: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape ``[length, head_dim]``, computed in fp32 and cached.

    One cache entry serves every layer, so the tables cost memory once per model.
    """
    key = (length, head_dim, base, device, dtype)
    if key not in _CACHE:
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        _CACHE[key] = (angles.cos().to(device, dtype), angles.sin().to(device, dtype))
    return _CACHE[key]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``[b, s, heads, head_dim]`` by position.

    Args:
        x: Queries or keys.
        cos: ``[s, head_dim]`` table rows for positions 0..s-1.
        sin: Same for sine.
    """
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
