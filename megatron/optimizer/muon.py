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

This module (registration) and ``muon_options.py`` (options, cost model, owner assignment) are
torch-free at import, so ``--help`` stays fast; the optimizer class and Newton-Schulz live in
``muon_torch.py``, imported by ``build_muon``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from megatron.optimizer.muon_options import MuonOptions
from megatron.optimizer.registry import register_optimizer

if TYPE_CHECKING:
    import torch

    from megatron.optimizer.host import StepHost
    from megatron.optimizer.param_groups import ParamGroup
    from megatron.optimizer.registry import OptimSettings

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
