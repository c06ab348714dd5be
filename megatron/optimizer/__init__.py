"""Optimizers: registry, param-group policy, one module per optimizer family.

Modules are imported explicitly (no entry-point scanning) so that the registry is complete and
deterministic. Each module is torch-free at import time.
"""

import megatron.optimizer.shampoo  # noqa: F401  (registers dshampoo)
from megatron.optimizer import (
    muon,  # noqa: F401  (registers muon)
    pytorch_optimizer_family,  # noqa: F401  (lamb, lion, adopt, soap)
    schedule_free,  # noqa: F401  (registers schedulefree)
    sophia,  # noqa: F401  (registers sophia)
    torch_optimizers,  # noqa: F401  (registers adamw, adam, sgd)
)
from megatron.optimizer.registry import OPTIMIZERS, get_optimizer_spec, register_optimizer

__all__ = ["OPTIMIZERS", "get_optimizer_spec", "register_optimizer"]
