"""The run plan: ``resolve(config, env) -> RunPlan``, above the knobs and the registries.

``megatron.config`` owns the knobs (dataclasses, CLI, environment); the registries
(``megatron.optimizer``, ``megatron.schedules``, ``megatron.objectives``, ...) own the choices
and import only ``megatron.config``. This package imports both: it derives every value of a run
once (``resolve``), holds the registry entries it chose (``RunPlan``), refuses inconsistent
combinations (``checks``), generates the DeepSpeed dict (``deepspeed``) and the ``auto`` paths
(``paths``). Torch-free: ``--help`` and ``--dry-run`` never import torch.
"""

from megatron.plan.resolve import resolve
from megatron.plan.run import RunPlan

__all__ = ["RunPlan", "resolve"]
