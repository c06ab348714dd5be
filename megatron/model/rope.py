"""Rotary position embeddings (Su et al., 2021, https://arxiv.org/abs/2104.09864), in the
rotate-half layout that Llama-style checkpoints use.

Options for imported models (see ``docs/import.md``):

- partial rotary (GPT-NeoX/Pythia): only the first ``rotary_dim`` dimensions of each head are
  rotated, with frequencies computed over ``rotary_dim``; the rest pass through;
- linear scaling (position interpolation): positions divided by a factor;
- Llama 3.1's rule: wavelengths longer than ``8192 / low_freq_factor`` are stretched by the
  factor, shorter than ``8192 / high_freq_factor`` kept, and those between interpolated.
"""

from __future__ import annotations

import math

import torch

_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

LLAMA3_LOW_FREQ_FACTOR = 1.0
LLAMA3_HIGH_FREQ_FACTOR = 4.0
LLAMA3_ORIGINAL_CONTEXT = 8192
"""Llama 3.1/3.2's fixed ``rope_scaling`` values (Megatron-LM's ``--use-rope-scaling`` uses them too)."""


def llama3_frequencies(inv_freq: torch.Tensor, factor: float) -> torch.Tensor:
    """Llama 3.1's rescaled inverse frequencies (see the module docstring)."""
    low, high, context = LLAMA3_LOW_FREQ_FACTOR, LLAMA3_HIGH_FREQ_FACTOR, LLAMA3_ORIGINAL_CONTEXT
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= context / high) & (wavelen <= context / low)
    return torch.where(medium, smoothed, scaled)


def rope_tables(
    length: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype,
    llama3_factor: float = 1.0, interpolation: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape ``[length, head_dim]``, computed in fp32 and cached.

    ``head_dim`` is the rotated width; ``llama3_factor`` and ``interpolation`` (1 = off) are
    the scalings of the module docstring. One cache entry serves every layer.
    """
    key = (length, head_dim, base, device, dtype, llama3_factor, interpolation)
    if key not in _CACHE:
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        if llama3_factor != 1.0:
            inv_freq = llama3_frequencies(inv_freq, llama3_factor)
        positions = torch.arange(length, dtype=torch.float64) / interpolation
        angles = torch.outer(positions, inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        _CACHE[key] = (angles.cos().to(device, dtype), angles.sin().to(device, dtype))
    return _CACHE[key]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``[b, s, heads, head_dim]`` by position.

    Args:
        x: Queries or keys.
        cos: ``[s, rotary_dim]`` table rows for positions 0..s-1; dimensions of ``x`` past
            ``rotary_dim`` are returned unchanged.
        sin: Same for sine.
    """
    width = cos.shape[-1]
    if width < x.shape[-1]:
        return torch.cat([apply_rope(x[..., :width], cos, sin), x[..., width:]], dim=-1)
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
