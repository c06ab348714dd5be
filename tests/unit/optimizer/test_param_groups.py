"""The param-group policy on a toy module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from megatron.config.fields import ConfigError
from megatron.optimizer.param_groups import split_param_groups
from megatron.optimizer.registry import OPTIMIZERS, get_optimizer_spec


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.output_layer = nn.Linear(4, 10, bias=False)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def names(groups):
    return {g.name: sorted(g.names) for g in groups}


def test_elementwise_policy_decays_matrices_only():
    groups = split_param_groups(Toy().named_parameters(), policy="elementwise", weight_decay=0.1)
    assert names(groups) == {
        "decay": ["output_layer.weight", "proj.weight", "word_embeddings.weight"],
        "no_decay": ["norm.bias", "norm.weight", "proj.bias"],
    }
    assert [g.weight_decay for g in groups] == [0.1, 0.0]


def test_matrix_policy_sends_embeddings_head_and_vectors_to_adamw():
    groups = split_param_groups(Toy().named_parameters(), policy="matrix", weight_decay=0.1)
    assert names(groups) == {
        "matrix": ["proj.weight"],
        "adamw_decay": ["output_layer.weight", "word_embeddings.weight"],
        "adamw_no_decay": ["norm.bias", "norm.weight", "proj.bias"],
    }


def test_unknown_optimizer_lists_known():
    with pytest.raises(ConfigError, match=r"^--optimizer 'nope': unknown optimizer; known: adam, adamw, "):
        get_optimizer_spec("nope")


def test_adam_is_adamw_as_in_megatron():
    from megatron.config.optim import OptimConfig

    torch.manual_seed(0)
    model = Toy()
    cfg = OptimConfig(optimizer="adam", weight_decay=0.1, lr=0.1)
    groups = split_param_groups(model.named_parameters(), policy="elementwise", weight_decay=0.1)
    ours = OPTIMIZERS["adam"].build(groups, cfg, None)
    ref = torch.optim.AdamW([p.clone().detach().requires_grad_() for p in ours.param_groups[0]["params"]], lr=0.1, weight_decay=0.1)
    for p, q in zip(ours.param_groups[0]["params"], ref.param_groups[0]["params"], strict=True):
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
    ours.step()
    ref.step()
    for p, q in zip(ours.param_groups[0]["params"], ref.param_groups[0]["params"], strict=True):
        torch.testing.assert_close(p, q)
