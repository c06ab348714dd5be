"""Schedule-free AdamW (``--optimizer schedulefree``) and SGD (``--optimizer sgdschedulefree``,
the argonne fork's name) from the ``schedulefree`` package.

Gradients are taken at y; the weights are averaged into x. ``train_mode``/``eval_mode`` call the
package's ``train()``/``eval()``, which the trainer runs around evaluation and before saving, so
evaluation and checkpoints see x (docs/design.md §4). The LR schedule must be constant (warmup
allowed): ``uses_lr_schedule=False`` makes plan.py refuse a decaying ``--lr-decay-style``.

Decisions:
- ZeRO: ``max_zero_stage=0``. ZeRO-1/2 hand the client optimizer flat fp32 partitions in place
  of the module parameters; ``eval()`` would then swap x into that partition while the module
  weights used for evaluation and saving stay y, and the checkpoint would mix y weights with
  x master weights. Not correct, so refused in plan.py.
- Precision: the same holds for DeepSpeed's fp16/bf16 wrappers, which give the client optimizer
  fp32 master copies. ``ScheduleFreeAdamW.train()``/``eval()`` therefore check that the optimizer
  still owns the module's own parameters and raise otherwise: no silent y-weights evaluation.
- Warmup: use the framework's ``--lr-warmup-iters`` (constant schedule);
  ``--schedulefree-warmup-steps`` is the package's own warmup, applied on top of it.
- Resume: checkpoints hold x and the optimizer state saved in eval mode. After loading, the
  optimizer returns to the mode it was in before the load (train, in the trainer), which maps
  the loaded x back to y exactly as the uninterrupted run does after its save.
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


@dataclass(**SECTION)
class ScheduleFreeOptions:
    """Schedule-free AdamW (``--optimizer schedulefree``)."""

    warmup_steps: int = 0
    """Schedule-free's own linear LR warmup in steps (on top of --lr-warmup-iters; 0: none)."""
    r: float = 0.0
    """Polynomial weighting power of the iterate average (0: uniform)."""
    weight_lr_power: float = 2.0
    """Average weights are lr_max**power during warmup (0: no LR weighting)."""


def _optimizer_class(base: str = "AdamWScheduleFree") -> type:
    import schedulefree

    class ScheduleFreeAdamW(getattr(schedulefree, base)):
        """A schedule-free optimizer that refuses foreign parameters and keeps its mode over a load."""

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._own_params = [p for g in self.param_groups for p in g["params"]]

        def _check_params(self) -> None:
            current = [p for g in self.param_groups for p in g["params"]]
            if len(current) != len(self._own_params) or any(
                a is not b for a, b in zip(current, self._own_params, strict=True)
            ):
                raise ConfigError(
                    "--optimizer: schedulefree needs to own the model's parameters (fp32, "
                    "--zero-stage 0): DeepSpeed replaced them with master copies or flat "
                    "partitions (--bf16/--fp16 or ZeRO), where train()/eval() would not move "
                    "the model to x for evaluation and saving. Drop --bf16/--fp16 or use adamw"
                )

        def step(self, closure: Any = None) -> Any:
            # DeepSpeed's bf16 wrapper takes a first step on its master copies while it starts.
            self._check_params()
            return super().step(closure)

        def train(self) -> None:
            self._check_params()
            super().train()

        def eval(self) -> None:
            self._check_params()
            super().eval()

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            # The checkpoint was taken in eval mode (weights x); return to the current mode.
            was_training = self.param_groups[0]["train_mode"]
            super().load_state_dict(state_dict)
            if was_training:
                self.train()
            else:
                self.eval()

    ScheduleFreeAdamW.__name__ = ScheduleFreeAdamW.__qualname__ = base
    return ScheduleFreeAdamW


def _train(optimizer: Any) -> None:
    optimizer.train()


def _eval(optimizer: Any) -> None:
    optimizer.eval()


@register_optimizer(
    "schedulefree",
    options=ScheduleFreeOptions,
    uses_lr_schedule=False,
    max_zero_stage=0,
    train_mode=_train,
    eval_mode=_eval,
    group_state_keys=("k", "weight_sum", "lr_max"),
)
def build_schedulefree(
    param_groups: list[ParamGroup], cfg: OptimSettings, options: ScheduleFreeOptions | None
) -> torch.optim.Optimizer:
    """``schedulefree.AdamWScheduleFree`` with Adam betas/eps and weight decay per group."""
    opts = options or ScheduleFreeOptions()
    return _optimizer_class()(
        torch_groups(param_groups),
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        warmup_steps=opts.warmup_steps,
        r=opts.r,
        weight_lr_power=opts.weight_lr_power,
    )


@register_optimizer(
    "sgdschedulefree",
    uses_lr_schedule=False,
    max_zero_stage=0,
    train_mode=_train,
    eval_mode=_eval,
    group_state_keys=("k", "weight_sum", "lr_max"),
)
def build_sgdschedulefree(
    param_groups: list[ParamGroup], cfg: OptimSettings, options: None
) -> torch.optim.Optimizer:
    """``schedulefree.SGDScheduleFree`` with --sgd-momentum and weight decay per group (the
    package's defaults for its own warmup and averaging; ZeRO and mode rules as schedulefree)."""
    return _optimizer_class("SGDScheduleFree")(
        torch_groups(param_groups),
        lr=cfg.lr,
        momentum=cfg.sgd_momentum,
        weight_decay=cfg.weight_decay,
    )
