"""Param-group policy: which tensors decay, which take a matrix update. A pure function.

Rules (docs/style.md, docs/design.md §4):
- 1-D tensors (biases, norm weights) never take weight decay.
- ``elementwise`` optimizers (AdamW, Lion, ...): every tensor in one rule, split by decay.
- ``matrix`` optimizers (Muon, Shampoo, SOAP): 2-D hidden matrices take the matrix update;
  embeddings, the output head and all 1-D tensors go to an AdamW side group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

EMBEDDING_MARKERS = ("word_embeddings", "position_embeddings", "output_layer")


def is_embedding_or_head(name: str) -> bool:
    """True for the input embeddings and the output head, which stay on AdamW."""
    return any(marker in name for marker in EMBEDDING_MARKERS)


@dataclass(kw_only=True, slots=True)
class ParamGroup:
    """A named group of parameters with its update rule and weight decay.

    Attributes:
        name: ``decay``, ``no_decay``, ``matrix`` or ``adamw_decay``/``adamw_no_decay``.
        rule: ``default`` (the optimizer's own rule), ``matrix`` or ``adamw`` (side group).
        weight_decay: Decoupled weight decay of the group.
        params: The tensors.
        names: Their parameter names (for logging and tests).
        lr_scale: The group's LR is ``--lr * lr_scale`` times the schedule (muP groups).
        eps: The group's Adam epsilon, or None for the optimizer's own (muP groups).
    """

    name: str
    rule: Literal["default", "matrix", "adamw"]
    weight_decay: float
    params: list[Any] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    lr_scale: float = 1.0
    eps: float | None = None

    def as_torch_group(self, **extra: Any) -> dict[str, Any]:
        """The dict a ``torch.optim.Optimizer`` takes, with our name kept for logging."""
        group = {"params": self.params, "weight_decay": self.weight_decay, "name": self.name}
        # Only set when they differ from the optimizer's defaults: groups without muP stay as before.
        if self.lr_scale != 1.0:
            group["lr_scale"] = self.lr_scale
        if self.eps is not None:
            group["eps"] = self.eps
        return {**group, **extra}

    def numel(self) -> int:
        """Number of scalars in the group."""
        return sum(p.numel() for p in self.params)


def torch_groups(param_groups: list[ParamGroup]) -> list[dict[str, Any]]:
    """The group dicts a ``torch.optim.Optimizer`` takes (``ParamGroup.as_torch_group``)."""
    return [g.as_torch_group() for g in param_groups]


def split_param_groups(
    named_params: Iterable[tuple[str, Any]],
    *,
    policy: Literal["elementwise", "matrix"],
    weight_decay: float,
    is_vector_like: Callable[[str], bool] = is_embedding_or_head,
) -> list[ParamGroup]:
    """Split trainable parameters into groups by the policy above.

    Args:
        named_params: ``(name, parameter)`` pairs, e.g. ``model.named_parameters()``.
        policy: ``elementwise`` or ``matrix``.
        weight_decay: Decay of the decaying groups.
        is_vector_like: Names of 2-D tensors that must not take a matrix update.

    Returns:
        The non-empty groups, in a fixed order.
    """
    if policy == "elementwise":
        groups = {
            "decay": ParamGroup(name="decay", rule="default", weight_decay=weight_decay),
            "no_decay": ParamGroup(name="no_decay", rule="default", weight_decay=0.0),
        }
    else:
        groups = {
            "matrix": ParamGroup(name="matrix", rule="matrix", weight_decay=weight_decay),
            "adamw_decay": ParamGroup(name="adamw_decay", rule="adamw", weight_decay=weight_decay),
            "adamw_no_decay": ParamGroup(name="adamw_no_decay", rule="adamw", weight_decay=0.0),
        }
    for name, param in named_params:
        if not param.requires_grad:
            continue
        if param.ndim < 2:
            key = "no_decay" if policy == "elementwise" else "adamw_no_decay"
        elif policy == "elementwise":
            key = "decay"
        else:
            key = "adamw_decay" if is_vector_like(name) else "matrix"
        groups[key].params.append(param)
        groups[key].names.append(name)
    return [g for g in groups.values() if g.params]


def describe_groups(groups: list[ParamGroup]) -> list[str]:
    """One line per group: what it updates, for the start-of-run log."""
    return [
        f"{g.name}: rule={g.rule} weight_decay={g.weight_decay:g} tensors={len(g.params)} "
        f"params={g.numel():,}"
        for g in groups
    ]
