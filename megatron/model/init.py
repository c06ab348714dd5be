"""Per-tensor seeded initialization.

Each weight draws from its own generator, seeded by the run seed and the tensor's logical name.
The full (unsharded) weight is drawn and then split, so a model built at TP=1, TP=2 or as a
pipeline stage holds exactly the same numbers: parallel layouts can be compared loss for loss.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch


def tensor_seed(seed: int, name: str) -> int:
    """A stable 63-bit seed for tensor ``name`` (crc32: unlike ``hash``, not salted per process)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def normal_init(std: float, seed: int, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ``init_method`` for megatron-core layers: N(0, std^2) from a generator of its own.

    Args:
        std: Standard deviation.
        seed: Run seed.
        name: Logical tensor name, identical in every parallel layout.

    Returns:
        A function filling a tensor in place.
    """

    def init(weight: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(tensor_seed(seed, name))
        with torch.no_grad():
            return weight.normal_(0.0, std, generator=generator)

    return init
