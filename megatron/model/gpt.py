"""The dense (non-pipelined) GPT and its language-model loss."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core import tensor_parallel as mtp
from torch import nn
from torch.utils.checkpoint import checkpoint

from megatron.model.layers import (
    Embedding,
    FinalNorm,
    OutputLayer,
    TransformerLayer,
    build_mp_config,
    head_input,
    sequence_parallel,
)
from megatron.model.spec import GPTSpec
from megatron.model.ulysses import sp_total


def _run_layers(layers: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        h = layer(h)
    return h


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy ``[b, s]`` of vocab-parallel logits ``[b, s, V / tp]``.

    The loss is computed in fp32. At TP=1 the fused ``F.cross_entropy`` gives the same numbers
    as megatron-core's vocab-parallel kernel without its cross-rank reductions.
    """
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        flat = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
        return flat.view_as(labels)
    # vocab_parallel_cross_entropy overwrites its input; .float() of fp32 logits is the same
    # tensor, which nothing reads afterwards.
    return mtp.vocab_parallel_cross_entropy(logits.float(), labels)


def vocab_parallel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Token ids ``[b, s]`` of the largest logit over the whole (TP-split) vocabulary: each rank's
    best, all-gathered; ties go to the lowest rank (then the lowest id). Used by LwF's hard
    labels and, on Gumbel-perturbed logits, by Sophia's label sampler."""
    best, ids = logits.detach().float().max(dim=-1)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1:
        return ids
    group = parallel_state.get_tensor_model_parallel_group()
    ids = ids + parallel_state.get_tensor_model_parallel_rank() * logits.shape[-1]
    all_best = [torch.empty_like(best) for _ in range(tp)]
    all_ids = [torch.empty_like(ids) for _ in range(tp)]
    dist.all_gather(all_best, best.contiguous(), group=group)
    dist.all_gather(all_ids, ids.contiguous(), group=group)
    winner = torch.stack(all_best).argmax(dim=0, keepdim=True)  # ties: the lowest rank, lowest id
    return torch.stack(all_ids).gather(0, winner).squeeze(0)


def masked_mean(losses: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``losses`` over positions where ``loss_mask`` is 1 (of the Ulysses group's
    positions: summing the group's values gives the mean)."""
    mask = loss_mask.to(losses.dtype)
    # Under Ulysses the count is the SP group's: each rank returns its share of the group mean.
    return (losses * mask).sum() / sp_total(mask.sum()).clamp(min=1.0)


class GPTModel(nn.Module):
    """Embedding -> L transformer layers -> final norm -> (tied or untied) vocab-parallel head.

    ``forward(tokens)`` returns vocab-parallel logits; ``forward(tokens, labels)`` returns the
    per-token losses ``[b, s]`` (chunked, without the logits, when ``spec.fused_ce_chunk_tokens``).
    """

    def __init__(self, spec: GPTSpec):
        super().__init__()
        self.spec = spec
        config = build_mp_config(parallel_state.get_tensor_model_parallel_world_size())
        self.embedding = Embedding(spec, config)
        self.layers = nn.ModuleList(TransformerLayer(spec, i, config) for i in range(spec.num_layers))
        self.final_norm = FinalNorm(spec)
        self.output = None if spec.tie_embeddings else OutputLayer(spec, config)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self._layers(self.embedding(tokens))
        h = self.final_norm(h)
        if labels is not None and self.spec.fused_ce_chunk_tokens:  # --fused-linear-cross-entropy
            from megatron.model.fused_loss import fused_token_losses

            chunk = self.spec.fused_ce_chunk_tokens
            if sequence_parallel(self.spec):
                return fused_token_losses(head_input(h), self.head_weight(), labels, chunk, tp_input=False)
            return fused_token_losses(h, self.head_weight(), labels, chunk)
        logits = self.embedding.logits(h) if self.output is None else self.output(h)
        if labels is None:
            return logits
        return token_losses(logits, labels)

    def _layers(self, h: torch.Tensor) -> torch.Tensor:
        chunk = self.spec.recompute_num_layers
        uniform_chunks = self.spec.recompute and self.spec.recompute_method == "uniform" and chunk > 1
        if not (uniform_chunks and self.training and torch.is_grad_enabled()):
            for layer in self.layers:
                h = layer(h)
            return h
        # --recompute-method uniform --recompute-num-layers N: keep only each chunk's input.
        for start in range(0, len(self.layers), chunk):
            h = checkpoint(_run_layers, self.layers[start : start + chunk], h, use_reentrant=False)
        return h

    def head_weight(self) -> torch.Tensor:
        """This rank's ``[V / tp, d]`` output-layer weight (the word embeddings when tied)."""
        if self.output is None:
            return self.embedding.word_embeddings.weight
        return self.output.output_layer.weight

