"""Global gradient norm and clipping for DeepSpeed's plain fp32 ZeRO-0 path.

DeepSpeed's ZeRO and bf16/fp16 optimizers compute and report the norm themselves. Its fp32
ZeRO-0 path clips with a helper that (a) discards the norm and (b) under pipeline parallelism
counts a tensor only on the first stage unless it is tensor-parallel, so later stages' norms and
biases go missing. This module counts every tensor exactly once across the model-parallel
(TP x PP) group, by the rule DeepSpeed's own optimizers use:
- a pipeline-replicated copy (the tied embedding on the last stage) is skipped;
- a TP-replicated tensor (norms, row-parallel biases) is counted on TP rank 0 only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def _counted_here(param: torch.nn.Parameter, tp_rank: int) -> bool:
    if getattr(param, "ds_pipe_replicated", False):
        return False
    return tp_rank == 0 or bool(getattr(param, "tensor_model_parallel", False))


def global_grad_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """L2 norm of all gradients of the model (every TP shard and PP stage), on every rank."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    grads = [p.grad for p in params if p.grad is not None and _counted_here(p, tp_rank)]
    if grads:
        squares = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]).square().sum()
    else:
        squares = torch.zeros((), device=torch.device("cpu"))
    group = parallel_state.get_model_parallel_group()
    if dist.get_world_size(group) > 1:
        dist.all_reduce(squares, group=group)
    return squares.sqrt()


def clip_grads_(params: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale gradients so their global norm is at most ``max_norm``; returns the norm before.

    Stays on the device (no host read of the norm): the coefficient is clamped at 1, and a
    multiplication by exactly 1.0 leaves the gradients bit for bit as they were.
    """
    params = [p for p in params if p.grad is not None]
    norm = global_grad_norm(params)
    if params:
        coef = (max_norm / (norm.to(torch.float64) + 1e-6)).clamp(max=1.0)
        grads = [p.grad for p in params]
        torch._foreach_mul_(grads, coef.to(device=grads[0].device, dtype=grads[0].dtype))
    return norm
