"""The GPT as a DeepSpeed ``PipelineModule``: the same blocks as the dense model, as layer specs.

Layer order: embedding, L transformer layers, final norm, head. With tied embeddings the
embedding is a ``TiedLayerSpec`` on the first and the last stage; DeepSpeed keeps the two
copies identical by all-reducing their gradients. Stages are balanced by transformer layers.
"""

from __future__ import annotations

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from megatron.core import parallel_state

from megatron.model.gpt import masked_mean, token_losses
from megatron.model.layers import (
    Embedding,
    FinalNorm,
    OutputLayer,
    TransformerLayer,
    build_mp_config,
)
from megatron.model.spec import GPTSpec


def _tied_logits(embedding: Embedding, hidden: torch.Tensor) -> torch.Tensor:
    return embedding.logits(hidden)


class PipelineLoss:
    """Loss of the last stage: masked mean token cross-entropy (as the dense path).

    ``labels`` is ``(targets, loss_mask, dataset_ids)``; when ``meter`` is set (a
    ``CorpusLoss``), the per-token losses are also added to it by dataset.
    """

    def __init__(self) -> None:
        self.meter = None

    def __call__(self, logits: torch.Tensor, labels: tuple[torch.Tensor, ...]) -> torch.Tensor:
        targets, loss_mask, dataset_ids = labels
        losses = token_losses(logits, targets)
        if self.meter is not None:
            self.meter.add(losses, loss_mask, dataset_ids)
        return masked_mean(losses, loss_mask)


def build_pipeline_model(spec: GPTSpec, tp: int, pp: int, dp: int) -> PipelineModule:
    """The pipelined GPT for a ``pp``-stage, ``tp``-way, ``dp``-replica topology.

    The topology's rank order (pipe, data, model) matches megatron-core's default
    ``tp-cp-ep-dp-pp`` order, so both libraries agree on every process group.
    """
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
        loss_fn=PipelineLoss(),
        topology=topology,
        partition_method="type:TransformerLayer",
    )
