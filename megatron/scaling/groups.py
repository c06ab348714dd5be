"""The one place that sorts every parameter into a muP / CompleteP group and gives the group its
LR, weight-decay and Adam-epsilon multipliers (spec mup.md section 2, Table 1 of Dey et al. 2025).

=============  ======================  ===================  =============================
group          LR                      weight decay         epsilon
=============  ======================  ===================  =============================
embedding      eta                     lambda               eps
hidden_matrix  eta m_N^-1 m_L^(a-1)    lambda m_N (indep.)  eps m_N^-1 m_L^-a
hidden_vector  eta m_L^(a-1)           0                    eps m_N^-1 m_L^-a (blocks)
final_norm     eta                     0                    eps
output_head    eta (or eta/m_N)        lambda               eps
=============  ======================  ===================  =============================

``hidden_vector`` is the block norms and the biases of the block's linear layers. The LR
scheduler multiplies each group's base LR (``--lr`` x multiplier) by the schedule factor, so
warmup, decay and ``--min-lr`` are shared in shape and scaled per group. Torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from megatron.config.fields import ConfigError
from megatron.optimizer.param_groups import ParamGroup, describe_groups, split_param_groups
from megatron.scaling.recipes import Scaling

log = logging.getLogger(__name__)

GROUPS = ("embedding", "hidden_matrix", "hidden_vector", "final_norm", "output_head")

# Name markers, checked in order; block parameters are split by their number of dimensions.
_MARKERS = (
    ("word_embeddings", "embedding"),
    ("position_embeddings", "embedding"),
    ("output_layer", "output_head"),
    ("final_layernorm", "final_norm"),
    ("self_attention", "block"),
    ("mlp", "block"),
    ("input_layernorm", "block"),
    ("post_attention_layernorm", "block"),
)

# Optimizers whose update the Adam(W) table above is derived for.
MUP_OPTIMIZERS = ("adamw", "adam")
_REFUSALS = {
    "muon": "its orthogonalized matrix update has its own shape scaling (--muon-lr-scale), which "
    "already targets width transfer; the muP hidden-LR rule would apply it twice",
    "dshampoo": "its preconditioned matrix update is not the per-coordinate Adam update the muP "
    "table is derived for",
    "sophia": "its clipped Hessian-preconditioned update is not covered by the muP table",
    "sgd": "muP for SGD scales other groups (vector-like LR x m_N); not implemented",
}


@dataclass(frozen=True, slots=True)
class GroupRule:
    """Multipliers of one group: LR and epsilon multiply --lr/--adam-eps; ``decays`` says
    whether the group takes weight decay, ``wd_mult`` multiplies --weight-decay."""

    lr_mult: float
    wd_mult: float
    eps_mult: float
    decays: bool


def check_optimizer(recipe: str, optimizer: str) -> None:
    """Refuse an optimizer the muP table is not derived for.

    Raises:
        ConfigError: Naming the optimizer and why.
    """
    if recipe == "none" or optimizer in MUP_OPTIMIZERS:
        return
    reason = _REFUSALS.get(optimizer, "the muP table is derived for Adam-type updates")
    raise ConfigError(
        f"--optimizer: {optimizer} with --scaling-recipe {recipe} is refused: {reason}; use "
        f"{'/'.join(MUP_OPTIMIZERS)} or --scaling-recipe none"
    )


def group_rules(scaling: Scaling) -> dict[str, GroupRule]:
    """The table above for ``scaling`` (every multiplier 1 at the base shape)."""
    m_n, m_l, a = scaling.width_mult, scaling.depth_mult, scaling.alpha
    depth_lr = m_l ** (a - 1.0)
    block_eps = 1.0 / (m_n * m_l**a)
    wd = m_n if scaling.weight_decay == "independent" else 1.0
    vector_eps = 1.0 if scaling.eps_scope == "matrices" else block_eps
    outer_eps = block_eps if scaling.eps_scope == "all" else 1.0
    head_lr = 1.0 / m_n if scaling.output_lr == "scaled" else 1.0
    return {
        "embedding": GroupRule(1.0, 1.0, outer_eps, True),
        "hidden_matrix": GroupRule(depth_lr / m_n, wd, block_eps, True),
        "hidden_vector": GroupRule(depth_lr, 0.0, vector_eps, False),
        "final_norm": GroupRule(1.0, 0.0, outer_eps, False),
        "output_head": GroupRule(head_lr, 1.0, outer_eps, True),
    }


def classify(name: str, ndim: int) -> str:
    """The group of parameter ``name`` (dense or pipeline-module naming).

    Raises:
        ValueError: A parameter no rule covers (a new layer must be classified here first).
    """
    for marker, group in _MARKERS:
        if marker in name.split("."):
            if group == "block":
                return "hidden_matrix" if ndim >= 2 else "hidden_vector"
            return group
    raise ValueError(f"scaling: parameter {name!r} is in no muP group; classify it in {__name__}")


def scaled_param_groups(
    named_params: Iterable[tuple[str, Any]], scaling: Scaling, *, weight_decay: float, eps: float
) -> list[ParamGroup]:
    """One ``ParamGroup`` per non-empty muP group, with its LR scale, weight decay and epsilon.

    Args:
        named_params: ``(name, parameter)`` pairs; frozen parameters are skipped.
        scaling: The run's derived multipliers.
        weight_decay: lambda (--weight-decay).
        eps: Adam epsilon (--adam-eps).

    Returns:
        Groups in the order of ``GROUPS`` (the embedding first: its LR is the logged one).
    """
    rules = group_rules(scaling)
    groups = {
        name: ParamGroup(
            name=name,
            rule="default",
            weight_decay=weight_decay * rule.wd_mult if rule.decays else 0.0,
            lr_scale=rule.lr_mult,
            eps=eps * rule.eps_mult,
        )
        for name, rule in rules.items()
    }
    for name, param in named_params:
        if param.requires_grad:
            group = groups[classify(name, param.ndim)]
            group.params.append(param)
            group.names.append(name)
    return [groups[name] for name in GROUPS if groups[name].params]


def table_lines(groups: list[ParamGroup], lr: float) -> list[str]:
    """The start-of-run table: group, tensors, parameters, LR, weight decay, epsilon."""
    lines = [f"{'group':<14}{'tensors':>8}{'params':>12}{'lr':>11}{'wd':>9}{'eps':>11}"]
    for g in groups:
        lines.append(
            f"{g.name:<14}{len(g.params):>8}{g.numel():>12,}{lr * g.lr_scale:>11.3e}"
            f"{g.weight_decay:>9.3g}{g.eps:>11.3e}"
        )
    return lines


def build_param_groups(
    named_params: Iterable[tuple[str, Any]], plan: Any, policy: str
) -> list[ParamGroup]:
    """The optimizer's param groups for ``plan``: the muP table with a recipe, else the
    optimizer's own policy (``split_param_groups``). Logs the groups at start.

    Args:
        named_params: ``model.named_parameters()`` (dense model or this pipeline stage).
        plan: The ``RunPlan``.
        policy: The optimizer's ``param_policy``.
    """
    optim = plan.config.optim
    if not plan.scaling.active:
        groups = split_param_groups(named_params, policy=policy, weight_decay=optim.weight_decay)
        for line in describe_groups(groups):
            log.info("optimizer %s group %s", optim.optimizer, line)
        return groups
    groups = scaled_param_groups(
        named_params, plan.scaling, weight_decay=optim.weight_decay, eps=optim.adam_eps
    )
    s = plan.scaling
    log.info(
        "scaling recipe %s: m_N=%g m_L=%g alpha=%g, embedding x%g, head input x%g, residual x%g",
        s.recipe, s.width_mult, s.depth_mult, s.alpha, s.embedding_mult, s.logit_mult,
        s.residual_mult,
    )
    for line in table_lines(groups, optim.lr):
        log.info("muP groups | %s", line)
    return groups
