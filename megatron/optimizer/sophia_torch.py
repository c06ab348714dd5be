"""Sophia-G's torch side: the ``SophiaG`` optimizer class, the vocab-parallel sampler and the
Gauss-Newton-Bartlett Hessian estimate with its ``before_step`` hook.

The update rule, the estimate and the refusals are described in ``sophia.py`` (the torch-free
registration module, which imports this one in ``build_sophia`` and in its hook).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron.model.gpt import masked_mean, token_losses, vocab_parallel_argmax
from megatron.optimizer.adamw_side import closure_loss
from megatron.optimizer.host import OptimizerHost, StepHost
from megatron.optimizer.placement import optimizer_slots
from megatron.optimizer.sophia_options import SophiaOptions


class SophiaG(torch.optim.Optimizer):
    """Sophia-G's update given Hessian estimates from ``fold_hessian`` (``sophia.py`` docstring).

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


def sample_vocab_parallel(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Token ids ``[b, s]`` sampled from the softmax of vocab-parallel ``logits`` ``[b, s, V/tp]``.

    Every TP rank returns the same ids (Gumbel-max over the whole vocabulary); ``generator``
    must differ between TP ranks (each draws the noise of its own vocabulary slice).
    """
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    exponential = uniform.clamp_(min=tiny).log_().neg_().clamp_(min=tiny)  # -log(u) > 0
    gumbel = exponential.log_().neg_()
    # Gumbel-max: the argmax of logits + Gumbel noise over the whole vocabulary is a sample.
    return vocab_parallel_argmax(logits.detach().float() + gumbel)


def gnb_estimate(
    module: torch.nn.Module, batches: list[Any], generator: torch.Generator, tokens: int
) -> list[torch.Tensor]:
    """``B * grad(L_hat)^2`` for ``module.parameters()`` (in that order), fp32.

    ``L_hat`` is the mean over ``batches`` of each micro-batch's masked mean loss on labels
    sampled from the model, averaged over the data-parallel group; ``B = tokens``.
    """
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


def _fold_into_optimizer(host: OptimizerHost, estimates: dict[str, torch.Tensor]) -> None:
    """Give each optimizer tensor its slice of the per-parameter estimates (``placement``)."""
    for slot in optimizer_slots(host):
        host.optimizer.fold_hessian(
            slot.tensor, slot.of_param(estimates[slot.name]), start=slot.start if slot.flat else None
        )


def gnb_hessian_step(host: StepHost, batches: list[Any], iteration: int) -> None:
    """The ``before_step`` hook: on iterations ``0, k, 2k, ...`` estimate and fold the Hessian."""
    plan, ctx = host.plan, host.ctx
    opts = plan.config.optim.options.get("sophia") or SophiaOptions()
    if iteration % opts.hessian_interval:
        return
    seed = hash((plan.config.train.seed, iteration, ctx.dp_rank, ctx.tp_rank)) & (2**63 - 1)
    generator = torch.Generator(device=ctx.device).manual_seed(seed)
    module = host.module
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    values = gnb_estimate(module, batches, generator, plan.tokens_per_step)
    _fold_into_optimizer(host, dict(zip(names, values, strict=True)))
