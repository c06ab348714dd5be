"""The query/key norms of ``--qk-layernorm``: per head (Qwen3, Megatron-LM) or over the whole
projection (``--qk-layernorm-scope projection``, OLMo-2).

Per head, one ``head_dim``-wide weight is shared by every head. Tensor parallelism hands each
rank its own heads, so each rank's gradient of that weight is its heads' share: it is summed
over the TP group in backward (with or without sequence parallelism, the heads see every
position here, after the column-parallel projection).

Over the projection, the norm's statistic is the mean square over all heads' values of a
position, and its weight has one entry per value (``heads * head_dim``). Each TP rank holds a
contiguous block of heads (our fused QKV rows are grouped per key/value head, and the query
heads of a group follow the Hugging Face order), so the weight is split along dim 0 like the
heads, and the rank's sum of squares is summed over the TP group in forward. Every rank's loss
depends on that sum through its own heads only, so its gradient is summed over TP too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core import tensor_parallel as mtp
from torch import nn

from megatron.model.spec import GPTSpec


class _SumOverTP(torch.autograd.Function):
    """All-reduce (sum) over the TP group in forward and in backward."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        x = x.clone()
        dist.all_reduce(x, group=parallel_state.get_tensor_model_parallel_group())
        return x

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        grad = grad.clone()
        dist.all_reduce(grad, group=parallel_state.get_tensor_model_parallel_group())
        return grad


class ProjectionRMSNorm(nn.Module):
    """RMSNorm over all heads of a ``[b, s, heads / tp, head_dim]`` projection (OLMo-2)."""

    def __init__(self, heads: int, head_dim: int, eps: float, tp: int):
        super().__init__()
        self.shape, self.eps, self.tp = (heads, head_dim), eps, tp
        self.weight = nn.Parameter(torch.ones(heads * head_dim))
        if tp > 1:
            mtp.set_tensor_model_parallel_attributes(self.weight, is_parallel=True, dim=0, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squares = x.float().pow(2).sum(dim=(-2, -1), keepdim=True)
        if self.tp > 1:
            squares = _SumOverTP.apply(squares)
        mean = squares / (self.shape[0] * self.shape[1] * self.tp)
        return (x.float() * torch.rsqrt(mean + self.eps) * self.weight.view(self.shape)).to(x.dtype)


def build_qk_norms(spec: GPTSpec, heads: int, kv_heads: int, tp: int,
                   head_norm: Callable[[], nn.Module]) -> tuple[nn.Module, nn.Module]:
    """The query and key norms of one attention layer (``heads``/``kv_heads``: this rank's;
    ``head_norm()``: a ``head_dim``-wide norm whose gradients are summed over TP)."""
    if spec.qk_layernorm_scope == "projection":
        return (ProjectionRMSNorm(heads, spec.head_dim, spec.norm_epsilon, tp),
                ProjectionRMSNorm(kv_heads, spec.head_dim, spec.norm_epsilon, tp))
    return head_norm(), head_norm()
