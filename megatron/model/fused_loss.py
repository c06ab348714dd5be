"""Fused output layer + cross-entropy that never holds the full ``[tokens, V / tp]`` logits.

``fused_token_losses(hidden, weight, labels, chunk_tokens)`` equals
``token_losses(hidden @ weight.T, labels)`` (``--fused-linear-cross-entropy``), computed
``chunk_tokens`` rows at a time:

- forward: per chunk, the logits ``h_c @ W.T`` in the run's dtype (the GEMM accumulates in
  fp32), then in fp32 the row max, the sum of exponentials and the target logit. At TP > 1 the
  vocabulary is split over ranks (``W`` is this rank's ``[V / tp, d]`` rows), and these three
  statistics are reduced over the TP group as megatron-core's ``vocab_parallel_cross_entropy``
  does (a MAX all-reduce, then one SUM all-reduce of the sum-exp and the target logit). Only
  the per-token loss and log-sum-exp (fp32, ``[tokens]``) are kept for backward.
- backward: recomputes each chunk's logits (one extra head GEMM) and forms
  ``g_i * (softmax_i - onehot_i)`` from the saved log-sum-exp, with no communication; it gives
  the hidden-state rows of the chunk and accumulates the weight gradient (fp32 accumulator,
  cast to the weight's dtype at the end).

Why recompute rather than compute the gradients in forward (as Liger's kernel does): our model
returns *per-token* losses, and the objective weights them afterwards (loss mask, masked
diffusion's 1/p weights, per-corpus meter). The weight gradient ``sum_i g_i dlogits_i^T h_i``
needs the incoming ``g_i``, which forward does not know; recomputing keeps every weighting
exact at the cost of a fourth head GEMM instead of three.

Peak loss memory is ``chunk_tokens * V / tp`` fp32 (plus one copy in the run's dtype) instead
of ``tokens * V / tp`` logits, their fp32 copy and the softmax of the unfused path.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core import tensor_parallel as mtp


def _tp_group() -> tuple[dist.ProcessGroup | None, int]:
    """The TP group (None at TP=1) and this rank's index in it."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return None, 0
    return parallel_state.get_tensor_model_parallel_group(), parallel_state.get_tensor_model_parallel_rank()


def _local_targets(labels: torch.Tensor, start: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(local column of each label, clamped into range; True where this rank holds the label)."""
    local = labels - start
    held = (local >= 0) & (local < rows)
    return local.clamp(0, rows - 1), held


def _chunk_stats(
    logits: torch.Tensor, local: torch.Tensor, held: torch.Tensor, group: dist.ProcessGroup | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, log-sum-exp) ``[c]`` fp32 of fp32 ``logits`` ``[c, V / tp]``; overwrites ``logits``."""
    target = logits.gather(1, local[:, None]).squeeze(1) * held
    row_max = logits.max(dim=1).values
    if group is not None:
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
    sum_exp = logits.sub_(row_max[:, None]).exp_().sum(dim=1)
    if group is not None:
        both = torch.stack([sum_exp, target])
        dist.all_reduce(both, group=group)
        sum_exp, target = both[0], both[1]
    lse = sum_exp.log_() + row_max
    return lse - target, lse


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Per-token losses ``[N]`` of ``hidden`` ``[N, d]`` and the vocab-parallel head ``[V / tp, d]``."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk):  # noqa: ANN001, ANN205
        group, tp_rank = _tp_group()
        rows = weight.shape[0]
        local, held = _local_targets(labels, tp_rank * rows, rows)
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(losses)
        for s in range(0, hidden.shape[0], chunk):
            e = min(s + chunk, hidden.shape[0])
            logits = (hidden[s:e] @ weight.t()).float()
            losses[s:e], lse[s:e] = _chunk_stats(logits, local[s:e], held[s:e], group)
        ctx.save_for_backward(hidden, weight, local, held, lse)
        ctx.chunk = chunk
        return losses

    @staticmethod
    def backward(ctx, grad_losses):  # noqa: ANN001, ANN205
        hidden, weight, local, held, lse = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        g = grad_losses.float()
        for s in range(0, hidden.shape[0], ctx.chunk):
            e = min(s + ctx.chunk, hidden.shape[0])
            h = hidden[s:e]
            probs = (h @ weight.t()).float().sub_(lse[s:e, None]).exp_()  # softmax, fp32
            rows = torch.arange(e - s, device=probs.device)
            probs[rows, local[s:e]] -= held[s:e].to(probs.dtype)
            dlogits = probs.mul_(g[s:e, None]).to(hidden.dtype)
            del probs
            if want_h:
                grad_h[s:e] = dlogits @ weight
            if want_w and grad_w.dtype == dlogits.dtype:
                grad_w.addmm_(dlogits.t(), h)
            elif want_w:  # a bf16/fp16 GEMM per chunk, summed over chunks in fp32
                grad_w += dlogits.t() @ h
        if want_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None


def fused_token_losses(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_tokens: int,
    *,
    tp_input: bool = True,
) -> torch.Tensor:
    """Per-token cross-entropy ``[b, s]`` (fp32) of the head ``weight`` ``[V / tp, d]`` applied to
    ``hidden`` ``[b, s, d]``: the numbers of ``token_losses(logits, labels)`` without the logits.

    The hidden states enter the TP region as a column-parallel layer's input does (identity
    forward, all-reduce of the gradient backward), so the caller's graph is the unfused one;
    ``tp_input=False`` when the caller already did (sequence parallelism's all-gather, whose
    backward reduce-scatters the partial gradients).
    """
    if chunk_tokens <= 0:
        raise ValueError(f"--fused-ce-chunk-tokens: {chunk_tokens} must be positive")
    if tp_input:
        hidden = mtp.copy_to_tensor_model_parallel_region(hidden)
    flat = hidden.reshape(-1, hidden.shape[-1])
    losses = _FusedLinearCrossEntropy.apply(flat, weight, labels.reshape(-1), chunk_tokens)
    return losses.view(labels.shape)
