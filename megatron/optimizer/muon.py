"""Muon: orthogonalized momentum for 2-D hidden matrices, AdamW for everything else (docs/design.md §4).

One ``torch.optim.Optimizer`` holds both kinds of group, so DeepSpeed, the LR scheduler and the
checkpoint see a single optimizer:

- ``rule="matrix"`` groups: momentum ``buf = beta * buf + (1 - beta) * g``; with Nesterov the
  direction is ``(1 - beta) * g + beta * buf``. The direction is divided by its Frobenius norm
  (+eps) and orthogonalized by ``ns_steps`` Newton-Schulz quintic iterations
  ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` (on the wide orientation: a tall matrix is
  transposed first). That runs in bf16 on CUDA and fp32 on CPU. The step is
  ``p *= 1 - lr * wd; p -= lr * scale(shape) * O``.
- ``rule="adamw"`` groups (embeddings, output head, norms, biases): plain AdamW with their own
  LR, betas and eps. Their LR follows the schedule through the scheduler's per-group
  ``lr_scale`` (``base_lr = --lr * lr_scale``), set to ``--muon-adamw-lr / --lr``.

Data parallelism at ZeRO-0: every DP rank holds the same gradients and momentum after DeepSpeed's
all-reduce, so the Newton-Schulz work (the whole cost of the step: ~``10 m^2 n`` flops per
``m x n`` matrix and iteration) is split: each matrix is assigned to one DP rank (greedy by
cost), which orthogonalizes it and broadcasts the result. Every rank then applies the same
update; the numbers are the ones a single rank would compute, at 1/DP of the per-rank cost.

Muon needs whole matrices, which tensor parallelism (shards) and ZeRO-1/2 (flat partitions of
each param group) take apart: ``muon_distributed.py`` reassembles the logical matrices, runs each
Newton-Schulz once across the TP x DP ranks and writes the results back into every rank's shard
or partition; momentum stays sharded like the layout. The engine binds the optimizer to the
layout after ``deepspeed.initialize`` (``after_initialize``). ``--muon-split-fused`` treats the
fused QKV weight as Q, K and V and the SwiGLU fc1 as gate and up (Moonlight's choice; off by
default: each fused weight is one matrix, as in Keller Jordan's Muon). DeepSpeed's flat bf16
pipeline optimizer is bound the same way as ZeRO-1/2. Refused by the plan: ZeRO-3 (parameters
partitioned) and --fp16 with pipeline parallelism (untested). An unbound optimizer that is handed a non-2-D
tensor is an error (never a silent fallback to an element-wise update).

This module (options, cost model, owner assignment, registration) is torch-free at import, so
``--help`` stays fast; the optimizer class and Newton-Schulz live in ``muon_torch.py``, imported
by ``build_muon``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from megatron.config.fields import SECTION, ConfigError, flag_name
from megatron.optimizer.registry import register_optimizer

if TYPE_CHECKING:
    import torch

    from megatron.optimizer.host import StepHost
    from megatron.optimizer.param_groups import ParamGroup
    from megatron.optimizer.registry import OptimSettings

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Quintic Newton-Schulz coefficients (a, b, c)."""
NS_EPS = 1e-7
"""Added to the Frobenius norm before dividing by it."""
LR_SCALES = ("original", "match_rms_adamw")


def _flag(field_name: str) -> str:
    return flag_name(field_name, "muon")


@dataclass(**SECTION)
class MuonOptions:
    """Muon hyperparameters (flags --muon-*)."""

    momentum: float = 0.95
    """Muon momentum beta of the matrix groups, in [0, 1)."""
    nesterov: bool = True
    """Use Nesterov momentum in the matrix groups."""
    ns_steps: int = 5
    """Newton-Schulz iterations that orthogonalize the momentum (>= 1)."""
    lr_scale: str = "original"
    """Per-matrix LR shape scaling: original = sqrt(max(1, rows/cols)); match_rms_adamw = 0.2 * sqrt(max(rows, cols))."""
    adamw_lr: float | None = None
    """LR of the AdamW side groups (embeddings, head, norms, biases); default: --lr. Follows the LR schedule."""
    adamw_beta1: float | None = None
    """beta1 of the AdamW side groups; default: --adam-beta1."""
    adamw_beta2: float | None = None
    """beta2 of the AdamW side groups; default: --adam-beta2."""
    adamw_eps: float | None = None
    """Epsilon of the AdamW side groups; default: --adam-eps."""
    split_fused: bool = False
    """Orthogonalize Q, K, V of the fused QKV weight (and gate, up of the SwiGLU fc1) as separate matrices (Moonlight); default: each fused weight is one matrix (Keller Jordan)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"{_flag('momentum')}: must be in [0, 1), got {self.momentum}")
        if not 1 <= self.ns_steps < 100:
            raise ConfigError(f"{_flag('ns_steps')}: must be in [1, 100), got {self.ns_steps}")
        if self.lr_scale not in LR_SCALES:
            raise ConfigError(
                f"{_flag('lr_scale')}: must be one of {', '.join(LR_SCALES)}, got {self.lr_scale!r}"
            )
        for name in ("adamw_lr", "adamw_eps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{_flag(name)}: must be > 0, got {value}")
        for name in ("adamw_beta1", "adamw_beta2"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"{_flag(name)}: must be in [0, 1), got {value}")


def shape_scale(mode: str, rows: int, cols: int) -> float:
    """The LR multiplier of a ``rows x cols`` matrix under ``--muon-lr-scale mode``."""
    if mode == "original":
        return math.sqrt(max(1.0, rows / cols))
    if mode == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown muon lr scale {mode!r}; known: {LR_SCALES}")


def ns_cost(rows: int, cols: int, steps: int) -> tuple[int, int]:
    """Multiply-add flops of ``steps`` Newton-Schulz iterations on a ``rows x cols`` matrix:
    (direct on X, on the Gram matrix). With ``m <= n`` the sides: direct
    ``steps * (4 m^2 n + 2 m^3)``; Gram ``4 m^2 n + (8 steps - 6) m^3``."""
    m, n = sorted((rows, cols))
    return steps * (4 * m * m * n + 2 * m**3), 4 * m * m * n + (8 * steps - 6) * m**3


def assign_owners(shapes: list[tuple[int, int]], ranks: int, steps: int) -> list[int]:
    """The rank that orthogonalizes each matrix: largest cost first, to the least-loaded rank.

    Cost: ``ns_cost`` of the cheaper form. Deterministic: every rank computes the same assignment.
    """
    from megatron.optimizer.owners import balance

    return balance([min(ns_cost(*shape, steps=steps)) for shape in shapes], ranks)


def _data_parallel_group() -> Any:
    """The DP group when megatron-core's parallel state is up (training), else None (tests)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return None
    return parallel_state.get_data_parallel_group()


def bind_muon(host: StepHost) -> None:
    """``after_initialize``: bind the optimizer to the model's TP/ZeRO layout."""
    from megatron.optimizer.muon_distributed import bind

    opts = host.plan.config.optim.options.get("muon") or MuonOptions()
    bind(host, split_fused=opts.split_fused)


@register_optimizer(
    "muon",
    options=MuonOptions,
    param_policy="matrix",
    max_zero_stage=2,
    reassembles_matrices=True,
    after_initialize=bind_muon,
)
def build_muon(
    param_groups: list[ParamGroup], cfg: OptimSettings, options: MuonOptions | None
) -> torch.optim.Optimizer:
    """Muon on the 2-D hidden matrices, AdamW (own lr/betas/eps) on the rest."""
    opts = options or MuonOptions()
    adamw_lr = cfg.lr if opts.adamw_lr is None else opts.adamw_lr
    betas = (
        cfg.adam_beta1 if opts.adamw_beta1 is None else opts.adamw_beta1,
        cfg.adam_beta2 if opts.adamw_beta2 is None else opts.adamw_beta2,
    )
    eps = cfg.adam_eps if opts.adamw_eps is None else opts.adamw_eps
    groups = []
    for g in param_groups:
        if g.rule == "matrix":
            groups.append(g.as_torch_group(rule="matrix"))
        elif g.rule == "adamw":
            # The scheduler sets lr = --lr * lr_scale * multiplier on every group.
            groups.append(
                g.as_torch_group(
                    rule="adamw", lr=adamw_lr, lr_scale=adamw_lr / cfg.lr, betas=betas, eps=eps
                )
            )
        else:
            raise ValueError(f"muon takes matrix/adamw groups, got {g.name!r} (rule {g.rule!r})")
    from megatron.optimizer.muon_torch import Muon

    return Muon(
        groups,
        dp_group=_data_parallel_group(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=opts.momentum,
        nesterov=opts.nesterov,
        ns_steps=opts.ns_steps,
        shape_scale=opts.lr_scale,
    )
