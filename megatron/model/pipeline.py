"""The GPT as a DeepSpeed ``PipelineModule``: the same blocks as the dense model, as layer specs.

Layer order: embedding, L transformer layers, final norm, head. With tied embeddings the
embedding is a ``TiedLayerSpec`` on the first and the last stage; DeepSpeed keeps the two
copies identical by all-reducing their gradients. Stages are balanced by transformer layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from megatron.core import parallel_state

from megatron.model.gpt import token_losses
from megatron.model.layers import (
    Embedding,
    FinalNorm,
    OutputLayer,
    TransformerLayer,
    build_mp_config,
)
from megatron.model.spec import GPTSpec
from megatron.objectives.registry import get_objective


def _tied_logits(embedding: Embedding, hidden: torch.Tensor) -> torch.Tensor:
    return embedding.logits(hidden)


class PipelineLoss:
    """Loss of the last stage: the objective's reduction of the token cross-entropy (as the
    dense path; masked mean for ``ar``).

    ``labels`` is ``(targets, loss_mask, dataset_ids)`` (for ``mdm``: clean tokens and the
    m / p weights, so mask and p reach the last stage); when ``meter`` is set (a
    ``CorpusLoss``), the per-token losses are also added to it by dataset.
    """

    def __init__(self, objective: Any) -> None:
        self.objective = objective
        self.meter = None

    def __call__(self, logits: torch.Tensor, labels: tuple[torch.Tensor, ...]) -> torch.Tensor:
        targets, loss_mask, dataset_ids = labels
        losses = token_losses(logits, targets)
        if self.meter is not None:
            self.objective.meter_add(self.meter, losses, loss_mask, dataset_ids)
        return self.objective.reduce(losses, loss_mask)


def build_pipeline_model(spec: GPTSpec, tp: int, pp: int, dp: int, objective: Any = None) -> PipelineModule:
    """The pipelined GPT for a ``pp``-stage, ``tp``-way, ``dp``-replica topology.

    The topology's rank order (pipe, data, model) matches megatron-core's default
    ``tp-cp-ep-dp-pp`` order, so both libraries agree on every process group. ``objective``
    (an ``ObjectiveSpec``; default ``ar``) reduces the last stage's token losses.
    """
    if objective is None:
        objective = get_objective("ar")
    if spec.recompute and spec.recompute_method == "uniform":
        spec = dataclasses.replace(spec, recompute_num_layers=1)  # a stage recomputes by layer
    config = build_mp_config(parallel_state.get_tensor_model_parallel_world_size())
    if spec.tie_embeddings:
        first = TiedLayerSpec("embed", Embedding, spec, config, tied_weight_attr="word_embeddings.weight")
        last = TiedLayerSpec(
            "embed",
            Embedding,
            spec,
            config,
            forward_fn=_tied_logits,
            tied_weight_attr="word_embeddings.weight",
        )
    else:
        first = LayerSpec(Embedding, spec, config)
        last = LayerSpec(OutputLayer, spec, config)
    layers = [first]
    layers += [LayerSpec(TransformerLayer, spec, i, config) for i in range(spec.num_layers)]
    layers += [LayerSpec(FinalNorm, spec), last]
    topology = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    return PipelineModule(
        layers=layers,
        loss_fn=PipelineLoss(objective),
        topology=topology,
        partition_method="type:TransformerLayer",
    )
