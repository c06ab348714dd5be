"""Training objectives: a registry (``registry.py``) and one module per objective.

Modules are imported explicitly so that the registry is complete and deterministic; each is
torch-free at import time.
"""

from megatron.objectives import ar, mdm  # noqa: F401  (register ar and mdm)
from megatron.objectives.registry import (
    OBJECTIVES,
    ObjectiveSpec,
    get_objective,
    register_objective,
)

__all__ = ["OBJECTIVES", "ObjectiveSpec", "get_objective", "register_objective"]
