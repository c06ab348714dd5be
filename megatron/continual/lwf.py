"""Learning without forgetting for continual pretraining, as TiC-LM does it (apple/ml-tic-lm
open_lm.patch; Li & Hoiem 2016, arXiv 1606.09282).

The teacher is a frozen copy of the weights the stage starts from; every micro-batch runs it once
more, without gradients, on the same tokens. The student's loss becomes

    LM loss + w * L_lwf,   L_lwf = KL(p_T || p_S) at temperature tau   (--lwf-kl)
                           L_lwf = CE(z_S, argmax z_T)                  (otherwise; tau = 1)

with ``p = softmax(z / tau)`` and no tau^2 factor. Reductions of the KL: ``elementmean`` (TiC-LM:
torch's default 'mean' divides the vocabulary sum by batch x length x V) and ``batchmean`` (the
per-token KL, averaged over tokens): their ratio is exactly V, the logits' full width.

Tensor parallelism: the logits are split over the vocabulary, so each log-softmax needs the
TP-wide max (a constant shift) and the TP-wide sum of exponentials (an all-reduce whose backward
is also an all-reduce: every rank's partial KL depends on it), and the per-token KL is the TP sum
of each rank's partial vocabulary sum (megatron-core's ``reduce_from_tensor_model_parallel_region``:
identity backward, since each partial enters the replicated loss once).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

from megatron.model.gpt import vocab_parallel_argmax


def _tp() -> int:
    return parallel_state.get_tensor_model_parallel_world_size()


def vocab_parallel_log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log_softmax(logits / temperature)`` over the whole (TP-split) vocabulary, fp32."""
    z = logits.float() / temperature
    shift = z.detach().amax(dim=-1, keepdim=True)
    if _tp() > 1:
        dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=parallel_state.get_tensor_model_parallel_group())
    z = z - shift
    sum_exp = z.exp().sum(dim=-1, keepdim=True)
    if _tp() > 1:
        # Every rank's loss uses the normalizer, so its gradient is the TP *sum* of the ranks'
        # gradients (an all-reduce in backward too; an identity backward would be wrong here).
        sum_exp = dist_nn.all_reduce(sum_exp, group=parallel_state.get_tensor_model_parallel_group())
    return z - sum_exp.log()


def kl_per_token(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(p_T || p_S)`` per position ``[b, s]`` (vocabulary summed across TP ranks)."""
    log_t = vocab_parallel_log_softmax(teacher_logits.detach(), temperature)
    log_s = vocab_parallel_log_softmax(student_logits, temperature)
    partial = (log_t.exp() * (log_t - log_s)).sum(dim=-1)
    return reduce_from_tensor_model_parallel_region(partial) if _tp() > 1 else partial




def lwf_loss(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    kl: bool,
    temperature: float,
    reduction: str,
) -> torch.Tensor:
    """The distillation term (module docstring), masked-mean over positions.

    Args:
        teacher_logits: ``[b, s, V / tp]`` (no grad needed).
        student_logits: ``[b, s, V / tp]``.
        loss_mask: ``[b, s]``.
        kl: KL at ``temperature``; else cross-entropy on the teacher's argmax.
        temperature: tau.
        reduction: ``elementmean`` or ``batchmean``.
    """
    from megatron.model.gpt import masked_mean, token_losses

    if not kl:
        labels = vocab_parallel_argmax(teacher_logits)
        # vocab_parallel_cross_entropy writes into its input: give it a copy at TP > 1.
        logits = student_logits.clone() if _tp() > 1 else student_logits
        return masked_mean(token_losses(logits, labels), loss_mask)
    per_token = masked_mean(kl_per_token(teacher_logits, student_logits, temperature), loss_mask)
    if reduction == "elementmean":
        return per_token / (student_logits.shape[-1] * _tp())
    return per_token


class Teacher:
    """A frozen copy of a model's current weights (same TP placement, same dtype).

    Args:
        build: Makes an empty model of the same shape (e.g. ``lambda: GPTModel(spec)``).
        source: The model to copy.
    """

    def __init__(self, build, source: torch.nn.Module):  # noqa: ANN001
        with torch.random.fork_rng(devices=[]):  # building must not move the run's RNG streams
            model = build()
        dtype = next(source.parameters()).dtype
        model = model.to(device=next(source.parameters()).device, dtype=dtype)
        model.load_state_dict(source.state_dict())
        self.model = model.eval().requires_grad_(False)
        self.bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The teacher's vocab-parallel logits."""
        return self.model(tokens)
