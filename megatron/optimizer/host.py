"""What optimizer-side hooks use of the training engine, as typed protocols.

``OptimizerSpec.before_step`` (Sophia's Hessian estimate), ``OptimizerSpec.after_initialize``
(Muon binding to the TP/ZeRO layout) and ``placement.optimizer_slots`` take these instead of the
whole ``TrainEngine``: the engine satisfies them structurally, and a test or
another trainer can hand in any object with the same few attributes. Torch-free at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from megatron.distributed.context import ParallelContext


@runtime_checkable
class OptimizerHost(Protocol):
    """The model and its optimizer, and the module-parameter names of each param group."""

    @property
    def module(self) -> torch.nn.Module:
        """The unwrapped model (dense GPT or this rank's pipeline stage)."""
        ...

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The client optimizer DeepSpeed wraps (its param groups may hold flat partitions)."""
        ...

    @property
    def param_names(self) -> list[list[str]]:
        """Per param group, the module names of the tensors it was built with."""
        ...


@runtime_checkable
class StepHost(OptimizerHost, Protocol):
    """An ``OptimizerHost`` that also knows the run plan and this rank's placement."""

    @property
    def plan(self) -> Any:  # the RunPlan (registries sit below megatron.plan and never import it)
        """The resolved run."""
        ...

    @property
    def ctx(self) -> ParallelContext:
        """This rank's parallel coordinates and device."""
        ...
