"""Sophia-G (``--optimizer sophia``): clipped sign-momentum preconditioned by a diagonal Hessian
estimate refreshed every ``--sophia-hessian-interval`` steps (Liu et al. 2023, arXiv 2305.14342).

Update, per element, at LR eta and decoupled weight decay lambda (groups without decay: 0)::

    theta <- theta * (1 - eta * lambda)
    m     <- beta1 * m + (1 - beta1) * g
    theta <- theta - eta * clip(m / max(rho * h, eps), -1, 1)

The Hessian diagonal ``h`` is an EMA ``h <- beta2 * h + (1 - beta2) * h_hat`` of the
Gauss-Newton-Bartlett estimate: labels ``y_hat`` are sampled from the model's own softmax, the
mean loss ``L_hat`` of the global batch on those labels is differentiated, and
``h_hat = B * grad(L_hat)^2`` with ``B`` the tokens of the global batch. The estimate needs a
forward/backward of its own, which DeepSpeed's step has no place for: the registry's
``before_step`` hook runs it (``gnb_hessian_step``) on the step's own micro-batches before their
training forward/backward, on iterations ``0, k, 2k, ...`` (so the first update has a Hessian).

Where the estimate goes: ``placement.optimizer_slots``: the whole tensor at ZeRO-0, the
parameter's slice of the flat fp32 partition at ZeRO-1/2 (and in DeepSpeed's flat bf16 optimizer).
ZeRO-3 partitions the parameters themselves (refused: ``max_zero_stage=2``); pipeline parallelism
has no dense forward to differentiate (refused: ``pipeline=False``); the estimate's backward runs
outside DeepSpeed's loss scaling, where fp16 gradients can underflow (refused: ``fp16=False``;
bf16 has fp32's range).

Sampling under tensor parallelism: the logits are split over the vocabulary, so each TP rank
draws Gumbel noise for its own slice, takes its best ``logit + noise``, and the ranks agree on the
overall best (Gumbel-max: an exact sample of the full softmax). The noise generator is seeded from
(``--seed``, iteration, DP rank, TP rank), so a resumed run draws the same labels.

This module (the derived ``unclipped`` state, registration) and ``sophia_options.py`` are
torch-free at import; the optimizer class, the sampler and the estimate live in ``sophia_torch.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from megatron.optimizer.param_groups import torch_groups
from megatron.optimizer.registry import register_optimizer
from megatron.optimizer.sophia_options import SophiaOptions

if TYPE_CHECKING:
    import torch

    from megatron.optimizer.host import StepHost
    from megatron.optimizer.param_groups import ParamGroup
    from megatron.optimizer.registry import OptimSettings


def gnb_hessian_step(host: StepHost, batches: list[Any], iteration: int) -> None:
    """The ``before_step`` hook: on iterations ``0, k, 2k, ...`` estimate and fold the Hessian
    (``sophia_torch.gnb_hessian_step``)."""
    from megatron.optimizer import sophia_torch

    sophia_torch.gnb_hessian_step(host, batches, iteration)


def unclipped(state: dict[str, torch.Tensor], group: dict[str, Any]) -> dict[str, torch.Tensor]:
    """1 where ``|m| < max(rho * h, eps)`` (the update is not clipped), else 0: its mean is the
    fraction of unclipped coordinates the paper tunes ``rho`` by (10-50%)."""
    if "exp_avg" not in state or "hessian" not in state:
        return {}
    denom = (state["hessian"] * group["rho"]).clamp(min=group["eps"])
    return {"unclipped": (state["exp_avg"].abs() < denom).float()}


@register_optimizer(
    "sophia",
    options=SophiaOptions,
    max_zero_stage=2,
    pipeline=False,
    fp16=False,
    before_step=gnb_hessian_step,
    derived_states=unclipped,
)
def build_sophia(
    param_groups: list[ParamGroup], cfg: OptimSettings, options: SophiaOptions | None
) -> torch.optim.Optimizer:
    """Sophia-G; its Hessian estimates come from the ``before_step`` hook."""
    opts = options or SophiaOptions()
    from megatron.optimizer.sophia_torch import SophiaG

    return SophiaG(
        torch_groups(param_groups),
        lr=cfg.lr,
        betas=(opts.beta1, opts.beta2),
        rho=opts.rho,
        weight_decay=cfg.weight_decay,
        eps=opts.eps,
    )
