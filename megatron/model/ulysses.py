"""DeepSpeed-Ulysses sequence parallelism (``--ds-sequence-parallel-size N``).

The N ranks of a sequence-parallel (SP) group read the same samples; each keeps a contiguous
``seq / N`` slice of positions (``sequence_shard``) and runs embeddings, norms, MLPs and the loss
on it alone. Attention needs every position, so around the attention core an all-to-all trades
the sequence split for a head split: ``[b, s / N, heads, d]`` -> ``[b, s, heads / N, d]``, the
core runs on whole sequences of its heads, and the inverse all-to-all brings the output back to
the slice (backward: the same exchanges reversed). This is DeepSpeed's
``deepspeed.sequence.layer.DistributedAttention``; its all-to-all is ``all_to_all_single``,
which NCCL and gloo (torch >= 2.13) both provide, so CPU runs take the same path as GPU runs.

Positions stay global: rotary tables and learned position embeddings start at
``sp_rank * s / N``. The loss of a rank is its slice's share of the group's token mean:
``sum(local losses) / (tokens of the whole group)``; DeepSpeed sums gradients over SP and
averages over DP, so the update equals one process's. The SP group is megatron-core's
context-parallel group (``initialize_model_parallel(context_parallel_size=N)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def sp_size() -> int:
    """Ulysses group size (1 when off or when no model-parallel state is set up)."""
    if not (dist.is_available() and dist.is_initialized() and parallel_state.model_parallel_is_initialized()):
        return 1
    return parallel_state.get_context_parallel_world_size()


def sp_rank() -> int:
    """This rank's index in the Ulysses group (0 when off)."""
    return parallel_state.get_context_parallel_rank() if sp_size() > 1 else 0


def sp_total(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the Ulysses group, without gradient (a loss denominator)."""
    if sp_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, group=parallel_state.get_context_parallel_group())
    return total


def position_offset(local_length: int) -> int:
    """Global position of this rank's first token (``sp_rank * s / N``)."""
    return sp_rank() * local_length


def sequence_shard(batch):  # noqa: ANN001, ANN201  (a megatron.data.loader.Batch or subclass)
    """This rank's contiguous slice of positions of a micro-batch (the batch itself at SP=1)."""
    n = sp_size()
    if n == 1:
        return batch
    r = sp_rank()

    def piece(t: torch.Tensor) -> torch.Tensor:
        return t.chunk(n, dim=1)[r]

    return dataclasses.replace(
        batch, tokens=piece(batch.tokens), labels=piece(batch.labels), loss_mask=piece(batch.loss_mask)
    )


def distributed_attention(core: Callable[..., torch.Tensor], kv_heads: int) -> Callable[..., torch.Tensor]:
    """``core`` over ``[b, heads, s, d]`` wrapped for sequence slices ``[b, s / N, heads, d]``.

    Args:
        core: The attention core on whole sequences (``[b, heads, s, d]`` in and out).
        kv_heads: Key/value heads of this TP rank (the head split keeps GQA groups whole).

    Returns:
        ``attend(q, k, v)`` taking and returning ``[b, s / N, heads, d]`` slices.
    """
    from deepspeed.sequence.layer import DistributedAttention

    def local(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = core(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    # Batch-first tensors: scatter the heads (dim 2), gather the sequence (dim 1).
    attention = DistributedAttention(
        local, parallel_state.get_context_parallel_group(), scatter_idx=2, gather_idx=1, num_kv_heads=kv_heads
    )
    return lambda q, k, v: attention(q, k, v, 0)
