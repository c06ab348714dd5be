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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from megatron.config.fields import SECTION, ConfigError, flag_name
from megatron.optimizer.adamw_side import closure_loss
from megatron.optimizer.param_groups import torch_groups
from megatron.optimizer.placement import optimizer_slots
from megatron.optimizer.registry import register_optimizer

if TYPE_CHECKING:
    import torch

    from megatron.config.optim import OptimConfig
    from megatron.optimizer.param_groups import ParamGroup


def _flag(field_name: str) -> str:
    return flag_name(field_name, "sophia")


@dataclass(**SECTION)
class SophiaOptions:
    """Sophia-G hyperparameters (flags --sophia-*); weight decay is --weight-decay."""

    beta1: float = 0.965
    """Momentum decay."""
    beta2: float = 0.99
    """Decay of the Hessian-diagonal EMA (applied at each Hessian refresh)."""
    rho: float = 0.04
    """Hessian scale in the denominator (update clipped to [-1, 1]); tune so 10-50% of coordinates stay unclipped (small models need larger values)."""
    hessian_interval: int = 10
    """Steps between Gauss-Newton-Bartlett Hessian estimates (k); each costs one extra forward/backward."""
    eps: float = 1e-12
    """Floor of rho * h in the denominator."""

    def __post_init__(self) -> None:
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{_flag(name)}: must be in [0, 1), got {value}")
        for name in ("rho", "eps"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{_flag(name)}: must be > 0, got {value}")
        if self.hessian_interval < 1:
            raise ConfigError(f"{_flag('hessian_interval')}: must be >= 1, got {self.hessian_interval}")


@functools.cache
def _sophia_class() -> type:
    import torch

    class SophiaG(torch.optim.Optimizer):
        """Sophia-G's update given Hessian estimates from ``fold_hessian`` (module docstring).

        Args:
            params: Tensors or param-group dicts.
            lr: Learning rate.
            betas: (momentum decay, Hessian EMA decay).
            rho: Hessian scale in the denominator.
            weight_decay: Decoupled weight decay.
            eps: Floor of ``rho * h``.
        """

        def __init__(
            self,
            params: Any,
            *,
            lr: float,
            betas: tuple[float, float] = (0.965, 0.99),
            rho: float = 0.04,
            weight_decay: float = 0.0,
            eps: float = 1e-12,
        ):
            defaults = {"lr": lr, "betas": betas, "rho": rho, "weight_decay": weight_decay, "eps": eps}
            super().__init__(params, defaults)

        def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            return state

        @torch.no_grad()
        def fold_hessian(self, p: torch.Tensor, estimate: torch.Tensor, start: int | None = None) -> None:
            """``h <- beta2 * h + (1 - beta2) * estimate`` for ``p`` (one of this optimizer's
            tensors), or for its flat slice ``[start, start + estimate.numel())``."""
            group = next((g for g in self.param_groups if any(q is p for q in g["params"])), None)
            if group is None:
                raise ValueError("sophia: fold_hessian got a tensor this optimizer does not hold")
            hessian = self._state(p)["hessian"]
            if start is not None:
                hessian = hessian.narrow(0, start, estimate.numel())
            if hessian.shape != estimate.shape:
                raise ValueError(
                    f"sophia: Hessian estimate of shape {tuple(estimate.shape)} for a state of "
                    f"shape {tuple(hessian.shape)}"
                )
            hessian.lerp_(estimate.to(hessian.dtype), 1.0 - group["betas"][1])

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            loss = closure_loss(closure)
            for group in self.param_groups:
                lr, wd, rho, eps = group["lr"], group["weight_decay"], group["rho"], group["eps"]
                beta1 = group["betas"][0]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self._state(p)
                    exp_avg = state["exp_avg"]
                    p.mul_(1.0 - lr * wd)
                    exp_avg.lerp_(p.grad, 1.0 - beta1)
                    denom = (state["hessian"] * rho).clamp_(min=eps)
                    ratio = torch.div(exp_avg, denom).clamp_(-1.0, 1.0)
                    p.add_(ratio, alpha=-lr)
            return loss

    SophiaG.__module__ = __name__
    SophiaG.__qualname__ = "SophiaG"
    return SophiaG


def __getattr__(name: str) -> Any:
    if name == "SophiaG":
        return _sophia_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sample_vocab_parallel(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Token ids ``[b, s]`` sampled from the softmax of vocab-parallel ``logits`` ``[b, s, V/tp]``.

    Every TP rank returns the same ids (Gumbel-max over the whole vocabulary); ``generator``
    must differ between TP ranks (each draws the noise of its own vocabulary slice).
    """
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    exponential = uniform.clamp_(min=tiny).log_().neg_().clamp_(min=tiny)  # -log(u) > 0
    gumbel = exponential.log_().neg_()
    best, ids = (logits.detach().float() + gumbel).max(dim=-1)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1:
        return ids
    group = parallel_state.get_tensor_model_parallel_group()
    ids = ids + parallel_state.get_tensor_model_parallel_rank() * logits.shape[-1]
    all_best = [torch.empty_like(best) for _ in range(tp)]
    all_ids = [torch.empty_like(ids) for _ in range(tp)]
    dist.all_gather(all_best, best.contiguous(), group=group)
    dist.all_gather(all_ids, ids.contiguous(), group=group)
    winner = torch.stack(all_best).argmax(dim=0, keepdim=True)
    return torch.stack(all_ids).gather(0, winner).squeeze(0)


def gnb_estimate(
    module: torch.nn.Module, batches: list[Any], generator: torch.Generator, tokens: int
) -> list[torch.Tensor]:
    """``B * grad(L_hat)^2`` for ``module.parameters()`` (in that order), fp32.

    ``L_hat`` is the mean over ``batches`` of each micro-batch's masked mean loss on labels
    sampled from the model, averaged over the data-parallel group; ``B = tokens``.
    """
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron.model.gpt import masked_mean, token_losses

    params = [p for p in module.parameters() if p.requires_grad]
    total = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params]
    for batch in batches:
        logits = module(batch.tokens)
        labels = sample_vocab_parallel(logits, generator)
        loss = masked_mean(token_losses(logits, labels), batch.loss_mask) / len(batches)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, g in zip(total, grads, strict=True):
            if g is not None:
                acc.add_(g.float())
    dp_group = parallel_state.get_data_parallel_group()
    dp = dist.get_world_size(dp_group)
    if dp > 1:  # in place, tensor by tensor: no second fp32 copy of the model
        works = [dist.all_reduce(t, group=dp_group, async_op=True) for t in total]
        for work in works:
            work.wait()
    return [g.div_(dp).square_().mul_(tokens) for g in total]


def _fold_into_optimizer(train_engine: Any, estimates: dict[str, torch.Tensor]) -> None:
    """Give each optimizer tensor its slice of the per-parameter estimates (module docstring)."""
    for slot in optimizer_slots(train_engine):
        train_engine.optimizer.fold_hessian(
            slot.tensor, slot.of_param(estimates[slot.name]), start=slot.start if slot.flat else None
        )


def gnb_hessian_step(train_engine: Any, batches: list[Any], iteration: int) -> None:
    """The ``before_step`` hook: on iterations ``0, k, 2k, ...`` estimate and fold the Hessian."""
    import torch

    plan, ctx = train_engine.plan, train_engine.ctx
    opts = plan.config.optim.options.get("sophia") or SophiaOptions()
    if iteration % opts.hessian_interval:
        return
    seed = hash((plan.config.train.seed, iteration, ctx.dp_rank, ctx.tp_rank)) & (2**63 - 1)
    generator = torch.Generator(device=ctx.device).manual_seed(seed)
    module = train_engine.module
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    values = gnb_estimate(module, batches, generator, plan.tokens_per_step)
    _fold_into_optimizer(train_engine, dict(zip(names, values, strict=True)))


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
    param_groups: list[ParamGroup], cfg: OptimConfig, options: SophiaOptions | None
) -> torch.optim.Optimizer:
    """Sophia-G; its Hessian estimates come from the ``before_step`` hook."""
    opts = options or SophiaOptions()
    return _sophia_class()(
        torch_groups(param_groups),
        lr=cfg.lr,
        betas=(opts.beta1, opts.beta2),
        rho=opts.rho,
        weight_decay=cfg.weight_decay,
        eps=opts.eps,
    )
