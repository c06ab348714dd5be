"""Megatron sequence parallelism (``--sequence-parallel``): the TP group also splits the sequence.

With TP > 1 and sequence parallelism, the parts of a transformer layer that tensor parallelism
replicates (the norms, dropout and the residual adds) run on ``s / tp`` positions per rank, in
the ``[s, b, h]`` layout megatron-core uses. The communication changes as Korthikanti et al.
(2022) describe:

- before a column-parallel GEMM: all-gather of the sequence shards (backward: reduce-scatter of
  the input gradient), instead of the identity (backward: all-reduce);
- after a row-parallel GEMM: reduce-scatter along the sequence (backward: all-gather), instead of
  an all-reduce;
- the embedding output is split along the sequence; the head gathers it back;
- parameters used inside the split region (norm weights and biases, row-parallel biases) see only
  this rank's positions, so their gradients are all-reduced over the TP group in backward
  (``replicated``), the classic sequence-parallel bug otherwise.

megatron-core's own sequence-parallel path allocates its buffers with ``torch.cuda`` calls, so
the autograd functions here do the same communication with ``all_gather_into_tensor`` and
``reduce_scatter_tensor`` on the input's device (NCCL's fast collectives; gloo has them too,
with an all-gather/all-reduce fallback for backends that lack them). The column-parallel GEMM
saves only this rank's shard of its input and gathers it again in backward, as megatron-core's
``LinearWithGradAccumulationAndAsyncCommunication`` does: that is where the activation memory
goes down.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core import tensor_parallel as mtp


def _group() -> dist.ProcessGroup:
    return parallel_state.get_tensor_model_parallel_group()


def all_gather_seq(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every TP rank's ``x`` along dim 0."""
    group = _group()
    world = dist.get_world_size(group)
    x = x.contiguous()
    out = torch.empty((x.shape[0] * world, *x.shape[1:]), dtype=x.dtype, device=x.device)
    try:
        dist.all_gather_into_tensor(out, x, group=group)
    except (RuntimeError, NotImplementedError):  # a backend without the fused collective
        dist.all_gather(list(out.chunk(world)), x, group=group)
    return out


def reduce_scatter_seq(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over the TP group; keep this rank's dim-0 chunk."""
    group = _group()
    world = dist.get_world_size(group)
    x = x.contiguous()
    out = torch.empty((x.shape[0] // world, *x.shape[1:]), dtype=x.dtype, device=x.device)
    try:
        dist.reduce_scatter_tensor(out, x, group=group)
    except (RuntimeError, NotImplementedError):
        total = x.clone()
        dist.all_reduce(total, group=group)
        out.copy_(total.chunk(world)[dist.get_rank(group)])
    return out


def split_seq(x: torch.Tensor) -> torch.Tensor:
    """This rank's dim-0 chunk of ``x`` (no communication), in a storage of its own: a view
    would keep the whole ``x`` alive for as long as backward keeps the chunk."""
    group = _group()
    chunk = x.chunk(dist.get_world_size(group))[dist.get_rank(group)]
    return chunk.clone(memory_format=torch.contiguous_format)


class _ScatterToSequence(torch.autograd.Function):
    """Forward: keep this rank's sequence chunk. Backward: all-gather the gradient."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return split_seq(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return all_gather_seq(grad)


class _GatherFromSequence(torch.autograd.Function):
    """Forward: all-gather the sequence. Backward: reduce-scatter (the consumers' partial
    gradients, one per TP rank, are summed)."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return all_gather_seq(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return reduce_scatter_seq(grad)


class _ReduceScatterToSequence(torch.autograd.Function):
    """Forward: sum the partial outputs, keep this rank's chunk. Backward: all-gather."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return reduce_scatter_seq(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return all_gather_seq(grad)


class _GatheredLinear(torch.autograd.Function):
    """``all_gather(x) @ W.T + b`` that saves only the shard ``x`` (gathered again in backward).

    ``batch_first``: the output is ``[b, s, out]`` (the head's layout) instead of ``[s, b, out]``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, batch_first):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.batch_first = bias is not None, batch_first
        total = all_gather_seq(x)
        out = torch.matmul(total.transpose(0, 1) if batch_first else total, weight.t())
        return out if bias is None else out + bias

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        total = all_gather_seq(x)
        if ctx.batch_first:  # [b, s, out] -> [s, b, out], as the sequence shards are laid out
            grad = grad.transpose(0, 1)
        grad_x = reduce_scatter_seq(grad.matmul(weight))
        g2 = grad.reshape(-1, grad.shape[-1])
        grad_w = g2.t().matmul(total.reshape(-1, total.shape[-1]))
        grad_b = g2.sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


def scatter_to_sequence(x: torch.Tensor) -> torch.Tensor:
    """``[s, b, h]`` -> this rank's ``[s / tp, b, h]``.

    Raises:
        ValueError: ``s`` is not divisible by the TP size (the shards would differ in length).
    """
    tp = dist.get_world_size(_group())
    if x.shape[0] % tp:
        raise ValueError(
            f"--sequence-parallel: a batch of sequence length {x.shape[0]} is not divisible by "
            f"--tensor-model-parallel-size {tp}; feed sequences of a multiple of {tp} tokens"
        )
    return _ScatterToSequence.apply(x)


def gather_from_sequence(x: torch.Tensor) -> torch.Tensor:
    """``[s / tp, b, h]`` -> ``[s, b, h]`` on every rank (before the head and the loss)."""
    return _GatherFromSequence.apply(x)


def column_parallel(layer: mtp.ColumnParallelLinear, x: torch.Tensor) -> torch.Tensor:
    """A column-parallel layer on sequence shards ``[s / tp, b, h]`` -> ``[s, b, out / tp]``."""
    bias = None if layer.skip_bias_add else layer.bias
    return _GatheredLinear.apply(x, layer.weight, bias, False)


def gathered_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The vocab-parallel head on sequence shards ``[s / tp, b, h]`` -> ``[b, s, V / tp]``,
    saving only the shard for backward (as :func:`column_parallel`)."""
    return _GatheredLinear.apply(x, weight, None, True)


def row_parallel(layer: mtp.RowParallelLinear, x: torch.Tensor) -> torch.Tensor:
    """A row-parallel layer ``[s, b, in / tp]`` -> sequence shards ``[s / tp, b, out]``."""
    out = _ReduceScatterToSequence.apply(torch.matmul(x, layer.weight.t()))
    return out if layer.bias is None else out + replicated(layer.bias)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout of sequence shards whose masks are independent across TP ranks.

    Every TP rank seeds the same RNG, so ``F.dropout`` on each rank's shard would repeat one
    mask pattern over the shards. Instead each rank draws the mask of the full sequence (the
    same draw on every rank, and again on recompute) and keeps its own chunk.
    """
    if p == 0.0:
        return x
    world = dist.get_world_size(_group())
    full = torch.empty((x.shape[0] * world, *x.shape[1:]), dtype=x.dtype, device=x.device)
    # The product with a bool mask saves the mask for backward at 1 byte per element (torch's
    # CPU dropout saves a mask of the input's dtype); x * 1 * scale rounds as x * scale does.
    keep = full.bernoulli_(1.0 - p).chunk(world)[dist.get_rank(_group())].bool()
    return x * keep * (1.0 / (1.0 - p))


def replicated(param: torch.Tensor) -> torch.Tensor:
    """A TP-replicated parameter used on sequence shards: identity forward, its gradient summed
    over the TP group in backward (each rank saw only its positions)."""
    return mtp.copy_to_tensor_model_parallel_region(param)
