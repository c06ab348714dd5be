"""Where each module parameter's optimizer state lives after ``deepspeed.initialize``.

- ZeRO-0: the optimizer holds the module tensors themselves (fp32), or DeepSpeed's per-tensor
  fp32 copies in the same group order (``OptimizerHost.param_names`` names them).
- ZeRO-1/2 and DeepSpeed's flat bf16 optimizer: one flat fp32 partition per group; every module
  parameter carries DeepSpeed's ``_hp_mapping`` (None when none of it is on this rank), the slice
  of the partition it owns and the matching slice of its own flattened elements.

Sophia folds its Hessian estimates through this, and the optimizer-state metrics read through it:
the DeepSpeed internals are known here only. Torch-free at import.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from megatron.optimizer.host import OptimizerHost


@dataclass(frozen=True, slots=True)
class Slot:
    """One module parameter's place in the optimizer.

    Attributes:
        name: The module parameter's name.
        tensor: What the optimizer holds: the parameter, its fp32 copy, or a flat partition.
        group: ``tensor``'s param group.
        flat: True for a flat partition: the parameter's elements ``[lp_start, lp_start + numel)``
            are the partition's ``[start, start + numel)``.
    """

    name: str
    tensor: torch.Tensor
    group: dict[str, Any]
    flat: bool = False
    start: int = 0
    numel: int = 0
    lp_start: int = 0

    def of_param(self, value: torch.Tensor) -> torch.Tensor:
        """The part of a parameter-shaped ``value`` this slot holds."""
        return value.reshape(-1).narrow(0, self.lp_start, self.numel) if self.flat else value

    def of_state(self, value: torch.Tensor) -> torch.Tensor:
        """The part of a state tensor of ``self.tensor`` that belongs to the parameter."""
        return value.narrow(0, self.start, self.numel) if self.flat else value


def optimizer_slots(host: OptimizerHost) -> Iterator[Slot]:
    """Every module parameter (with state on this rank) and where the optimizer holds it."""
    optimizer = host.optimizer
    named = list(host.module.named_parameters())
    if any(hasattr(p, "_hp_mapping") for _, p in named):
        for name, p in named:
            fragment = p._hp_mapping
            if fragment is None:  # not in this rank's partition
                continue
            group = optimizer.param_groups[fragment.param_group_index]
            yield Slot(name=name, tensor=group["params"][0], group=group, flat=True,
                       start=fragment.hp_fragment_address.start,
                       numel=fragment.hp_fragment_address.numel,
                       lp_start=fragment.lp_fragment_address.start)
        return
    for group, names in zip(optimizer.param_groups, host.param_names, strict=True):
        for p, name in zip(group["params"], names, strict=True):
            yield Slot(name=name, tensor=p, group=group)
