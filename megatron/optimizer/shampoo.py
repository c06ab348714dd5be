"""dshampoo: block-diagonal Shampoo for 2-D hidden matrices, AdamW for everything else.

Matrix update (group rule ``matrix``), per parameter ``W`` with gradient ``G`` at step ``t``:

1. ``W`` is cut into blocks of at most ``max_preconditioner_dim`` rows and columns: full blocks
   first, the remainder last (a 10x6 matrix with max dim 4 gives rows 4, 4, 2 and columns 4, 2,
   i.e. 6 blocks, numbered row-major).
2. Per block ``b``: ``L_b += G_b G_bᵀ`` and ``R_b += G_bᵀ G_b`` (with ``beta2 < 1`` an EMA
   ``L_b = beta2 L_b + (1 - beta2) G_b G_bᵀ`` instead).
3. When ``t >= start_preconditioning_step`` and ``(t - start) % precondition_frequency == 0``, the
   inverse 4th roots ``(L_b + eps I)^(-1/4)`` and ``(R_b + eps I)^(-1/4)`` are recomputed by a
   symmetric eigendecomposition in float64, with ``eps = epsilon * max eigenvalue`` (relative; an
   all-zero statistic uses ``epsilon`` itself). Eigenvalues below ``eps`` (round-off) are clamped.
4. Grafting direction ``D``: ``adam`` = ``G / (sqrt(v / (1 - adam_beta2^t)) + adam_eps)`` with
   ``v = adam_beta2 v + (1 - adam_beta2) G²`` (no first moment: momentum comes in step 6);
   ``sgd`` = ``G``; ``none`` = ``G`` before the start step and no rescaling after it.
5. Direction: before the start step ``D``; from it on, per block
   ``P_b = L_b^(-1/4) G_b R_b^(-1/4)`` rescaled to the Frobenius norm of ``D_b`` (unless ``none``).
6. Momentum (EMA form, keeps the Adam-like scale): ``m = momentum m + (1 - momentum) direction``;
   decoupled weight decay ``W *= 1 - lr wd``; ``W -= lr m``. ``momentum = 0`` applies the
   direction directly.

Side groups (rule ``adamw``: embeddings, head, norms, biases): AdamW with ``--adam-beta1/2`` and
``--adam-eps``, torch's formula.

State lives in ``optimizer.state[param]`` as tensors plus the int ``step``: per block ``L_<b>``,
``R_<b>``, ``L_inv_<b>``, ``R_inv_<b>``, plus ``momentum_buffer`` and ``exp_avg_sq``; so
``state_dict()``/``load_state_dict()`` (and DeepSpeed checkpoints) restore it exactly. Tensors are
kept in the parameter's dtype because ``load_state_dict`` casts floating state to it.

Distributed (``after_initialize`` binds the optimizer to the model's layout through
``matrix_distributed.py``, the machinery Muon uses): the blocks are cut from the *logical* matrix,
gathered over the TP group (the SwiGLU fc1's stride-2 shards back in ``[gate; up]`` order), so
TP=2 takes the single-process step. Each matrix's statistics and inverse roots live on one owner
rank among the TP x DP ranks (ZeRO-1/2; at ZeRO-0 among the TP ranks, DP replicas repeat the
work), chosen by ``shampoo_cost`` balance; ``momentum_buffer`` and ``exp_avg_sq`` are element-wise
and stay on the TP shard or the ZeRO partition. The owner computes the matrix's direction and
sends each rank its piece, which ZeRO-1/2 ranks write into their flat fp32 partition through
DeepSpeed's ``_hp_mapping`` fragments. A flat partition keeps an owned matrix's blocks as
``m<i>.L_<b>`` (``i``: the matrix's position in its group; ``OptimizerSpec.matrix_state_keys``
names the block keys, so universal checkpoints keep them whole and ``load_matrix_states`` puts
them on the new layout's owners). DeepSpeed's flat bf16 pipeline optimizer is bound like ZeRO-1/2.
Refused by the plan: ZeRO-3 (parameters partitioned) and --fp16 with PP or ZeRO >= 1 (untested).
An unbound optimizer that is handed a non-2-D tensor is an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from megatron.optimizer.registry import register_optimizer
from megatron.optimizer.shampoo_options import DShampooOptions

if TYPE_CHECKING:
    import torch

    from megatron.optimizer.param_groups import ParamGroup
    from megatron.optimizer.registry import OptimSettings


def bind_dshampoo(host: Any) -> None:
    """``after_initialize``: bind the optimizer to the model's TP/ZeRO layout."""
    from megatron.optimizer.matrix_distributed import bind_layouts

    layouts, tp_group = bind_layouts(host, "dshampoo")
    host.optimizer.bind(layouts, tp_group)


def _data_parallel_group() -> Any:
    """The DP group when megatron-core's parallel state is up (training), else None (tests)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return None
    return parallel_state.get_data_parallel_group()


@register_optimizer(
    "dshampoo",
    options=DShampooOptions,
    param_policy="matrix",
    max_zero_stage=2,
    reassembles_matrices=True,
    after_initialize=bind_dshampoo,
    matrix_state_keys=r"[LR](_inv)?_\d+",
)
def build_dshampoo(
    param_groups: list[ParamGroup], cfg: OptimSettings, options: DShampooOptions | None
) -> torch.optim.Optimizer:
    """Block-diagonal Shampoo on 2-D hidden matrices, AdamW on the side groups."""
    groups = [
        g.as_torch_group(rule="matrix" if g.rule == "matrix" else "adamw") for g in param_groups
    ]
    from megatron.optimizer.shampoo_torch import DShampoo

    return DShampoo(
        groups,
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        options=options,
        dp_group=_data_parallel_group(),
    )
