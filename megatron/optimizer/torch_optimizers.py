"""Element-wise optimizers from ``torch.optim``: adamw (default), adam, sgd."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from megatron.optimizer.param_groups import torch_groups
from megatron.optimizer.registry import register_optimizer

if TYPE_CHECKING:
    import torch

    from megatron.optimizer.param_groups import ParamGroup
    from megatron.optimizer.registry import OptimSettings



@register_optimizer("adamw")
def build_adamw(param_groups: list[ParamGroup], cfg: OptimSettings, _: Any) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` with decoupled weight decay per group."""
    import torch

    # foreach=True: one fused multi-tensor kernel per group instead of a Python loop over tensors.
    return torch.optim.AdamW(
        torch_groups(param_groups),
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        foreach=True,
    )


@register_optimizer("adam")
def build_adam(param_groups: list[ParamGroup], cfg: OptimSettings, _: Any) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay.

    In Megatron(-DeepSpeed), ``--optimizer adam`` is apex FusedAdam in AdamW mode, and the seeds
    type ``--optimizer adam`` meaning AdamW; so ``adam`` decays like ``adamw`` here too.
    """
    import torch

    return torch.optim.Adam(
        torch_groups(param_groups),
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        decoupled_weight_decay=True,
        foreach=True,
    )


@register_optimizer("sgd")
def build_sgd(param_groups: list[ParamGroup], cfg: OptimSettings, _: Any) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` with momentum ``--sgd-momentum``."""
    import torch

    return torch.optim.SGD(
        torch_groups(param_groups),
        lr=cfg.lr,
        momentum=cfg.sgd_momentum,
        weight_decay=cfg.weight_decay,
        foreach=True,
    )
