"""Optimizers from the ``pytorch-optimizer`` package: lamb, lion, adopt, soap.

Every one takes decoupled weight decay per group (``--weight-decay``; 1-D tensors none) and
clips through DeepSpeed (``--clip-grad``); the package's own clipping options stay off.

ZeRO (docs/design.md §4): under ZeRO-1/2 DeepSpeed hands the client optimizer one flat fp32
partition per param group instead of the tensors.
- lion, adopt are element-wise (their only cross-element quantity is the step count): correct on
  flat shards, ``max_zero_stage=3``.
- lamb computes its trust ratio ||w|| / ||update|| per tensor; on a flat shard it would be one
  ratio per shard spanning many tensors. soap builds Kronecker preconditioners of whole matrices;
  a flat shard has no rows and columns. Both are ``max_zero_stage=0`` (plan.py refuses the pair);
  gathering whole matrices per rank, as distributed Muon does, is not implemented. DeepSpeed's
  bf16 pipeline optimizer flattens at ZeRO-0 too, which plan.py does not see: their ``step``
  refuses parameters whose shapes changed (``_whole_tensor``) instead of updating shards.

param_policy: all four are ``elementwise``. soap preconditions every tensor with 2+ dimensions
(including the embedding/head; a dimension above ``--soap-max-precond-dim`` is left
unrotated) and its implementation updates 1-D tensors with plain Adam itself, so no AdamW side
group is needed.

sophia (Sophia-G) is ours, in sophia.py: pytorch-optimizer has only SophiaH, whose Hutchinson
estimate needs ``loss.backward(create_graph=True)``, which DeepSpeed's ``engine.backward`` does not do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from megatron.config.fields import SECTION, ConfigError
from megatron.optimizer.param_groups import torch_groups
from megatron.optimizer.registry import register_optimizer

if TYPE_CHECKING:
    import torch

    from megatron.optimizer.param_groups import ParamGroup
    from megatron.optimizer.registry import OptimSettings



def _whole_tensor(cls: type, name: str) -> type:
    """``cls`` that refuses to step on anything but the tensors' own shapes.

    plan.py refuses ZeRO-1/2/3 for per-matrix optimizers; DeepSpeed's bf16 pipeline optimizer
    (--bf16 with --pipeline-model-parallel-size > 1) flattens the same way at ZeRO-0, so the
    shapes are checked again where the update happens. Per-tensor fp32 master copies (the fp16
    and bf16 wrappers without pipelining) keep the shapes and pass.
    """

    class WholeTensor(cls):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._shapes = [tuple(p.shape) for g in self.param_groups for p in g["params"]]

        def step(self, *args: Any, **kwargs: Any) -> Any:
            shapes = [tuple(p.shape) for g in self.param_groups for p in g["params"]]
            if shapes != self._shapes:
                raise ConfigError(
                    f"--optimizer: {name} updates whole tensors, but DeepSpeed handed it flat "
                    "partitions (ZeRO, or --bf16 with pipeline parallelism); use --zero-stage 0 "
                    "without --bf16 pipelining, or an element-wise optimizer such as adamw"
                )
            return super().step(*args, **kwargs)

    WholeTensor.__name__ = WholeTensor.__qualname__ = cls.__name__
    return WholeTensor


@dataclass(**SECTION)
class LambOptions:
    """LAMB (``--optimizer lamb``); betas and eps are --adam-beta1/--adam-beta2/--adam-eps."""

    grad_averaging: bool = True
    """Scale the new gradient in the first moment by (1 - beta1)."""
    rectify: bool = False
    """RAdam-style rectification of the adaptive step (slower: no fused multi-tensor path)."""


@register_optimizer("lamb", options=LambOptions, max_zero_stage=0)
def build_lamb(
    param_groups: list[ParamGroup], cfg: OptimSettings, options: LambOptions | None
) -> torch.optim.Optimizer:
    """``pytorch_optimizer.Lamb``: Adam update scaled by a per-tensor trust ratio."""
    from pytorch_optimizer import Lamb

    opts = options or LambOptions()
    return _whole_tensor(Lamb, "lamb")(
        torch_groups(param_groups),
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        weight_decouple=True,
        grad_averaging=opts.grad_averaging,
        rectify=opts.rectify,
        pre_norm=False,
    )


@dataclass(**SECTION)
class LionOptions:
    """Lion (``--optimizer lion``); use a 3-10x smaller --lr than AdamW."""

    beta1: float = 0.9
    """Interpolation of momentum and gradient for the sign update."""
    beta2: float = 0.99
    """Momentum decay."""


@register_optimizer("lion", options=LionOptions)
def build_lion(
    param_groups: list[ParamGroup], cfg: OptimSettings, options: LionOptions | None
) -> torch.optim.Optimizer:
    """``pytorch_optimizer.Lion``: sign of interpolated momentum, decoupled weight decay."""
    from pytorch_optimizer import Lion

    opts = options or LionOptions()
    return Lion(
        torch_groups(param_groups),
        lr=cfg.lr,
        betas=(opts.beta1, opts.beta2),
        weight_decay=cfg.weight_decay,
        weight_decouple=True,
    )


@dataclass(**SECTION)
class AdoptOptions:
    """ADOPT (``--optimizer adopt``); beta1 is --adam-beta1."""

    beta2: float = 0.9999
    """Second-moment decay (ADOPT's recommended 0.9999)."""
    eps: float = 1e-6
    """Floor of the second-moment square root."""


@register_optimizer("adopt", options=AdoptOptions)
def build_adopt(
    param_groups: list[ParamGroup], cfg: OptimSettings, options: AdoptOptions | None
) -> torch.optim.Optimizer:
    """``pytorch_optimizer.ADOPT`` with decoupled weight decay and its default step**0.25 clip."""
    from pytorch_optimizer import ADOPT

    opts = options or AdoptOptions()
    return ADOPT(
        torch_groups(param_groups),
        lr=cfg.lr,
        betas=(cfg.adam_beta1, opts.beta2),
        eps=opts.eps,
        weight_decay=cfg.weight_decay,
        weight_decouple=True,
    )


@dataclass(**SECTION)
class SoapOptions:
    """SOAP (``--optimizer soap``): Adam in the eigenbasis of Shampoo's preconditioner."""

    beta1: float = 0.95
    """First-moment decay."""
    beta2: float = 0.95
    """Second-moment decay (and of the preconditioner statistics unless --soap-shampoo-beta)."""
    shampoo_beta: float | None = None
    """Decay of the preconditioner statistics (default: --soap-beta2)."""
    precondition_frequency: int = 10
    """Steps between eigenbasis updates."""
    max_precond_dim: int = 10000
    """Largest dimension to precondition; larger dimensions are left unrotated."""


@register_optimizer("soap", options=SoapOptions, max_zero_stage=0)
def build_soap(
    param_groups: list[ParamGroup], cfg: OptimSettings, options: SoapOptions | None
) -> torch.optim.Optimizer:
    """``pytorch_optimizer.SOAP``; eps is --adam-eps."""
    from pytorch_optimizer import SOAP

    opts = options or SoapOptions()
    return _whole_tensor(SOAP, "soap")(
        torch_groups(param_groups),
        lr=cfg.lr,
        betas=(opts.beta1, opts.beta2),
        shampoo_beta=opts.shampoo_beta,
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        precondition_frequency=opts.precondition_frequency,
        max_precondition_dim=opts.max_precond_dim,
    )
