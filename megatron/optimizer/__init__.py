"""Optimizers: registry, param-group policy, one module per optimizer family.

Modules are imported explicitly (no entry-point scanning) so that the registry is complete and
deterministic. Each module is torch-free at import time.
"""

from megatron.optimizer import torch_optimizers  # noqa: F401  (registers adamw, adam, sgd)
from megatron.optimizer.registry import OPTIMIZERS, get_optimizer_spec, register_optimizer

__all__ = ["OPTIMIZERS", "get_optimizer_spec", "register_optimizer"]
