"""The optimizer registry: ``--optimizer NAME`` -> an ``OptimizerSpec``.

Adding an optimizer is one module that calls ``register_optimizer`` (imported explicitly by
``megatron/optimizer/__init__.py``). Its namespaced hyperparameters are a dataclass passed as
``options=``: field ``momentum`` of the ``muon`` entry becomes the flag ``--muon-momentum``.
This module is torch-free so that ``--help`` and ``--dry-run`` stay fast; ``build`` functions
import torch when they run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import torch

    from megatron.optimizer.host import StepHost
    from megatron.optimizer.param_groups import ParamGroup


class OptimSettings(Protocol):
    """What ``build`` functions read of the common optimizer settings (``--lr``, ...). The config
    section (``megatron.config.optim.OptimConfig``) satisfies it; registries never import config
    classes (the config validates names against the registries, not the other way round)."""

    lr: float
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    adam_eps: float
    sgd_momentum: float


BuildFn = Callable[["list[ParamGroup]", OptimSettings, Any], "torch.optim.Optimizer"]


@dataclass(frozen=True, kw_only=True, slots=True)
class OptimizerSpec:
    """One registered optimizer.

    Attributes:
        name: The ``--optimizer`` value.
        build: ``build(param_groups, optim_cfg, options) -> torch.optim.Optimizer``.
        options: Dataclass of namespaced hyperparameters (flags ``--<name>-<field>``), or None.
        uses_lr_schedule: False for schedule-free optimizers (a decaying schedule is an error).
        param_policy: ``elementwise`` (one update rule for every tensor) or ``matrix`` (2-D hidden
            matrices take the matrix update, everything else an AdamW side group).
        max_zero_stage: Highest ZeRO stage this optimizer is correct under.
        train_mode: Called before training steps (schedule-free switches to y), or None.
        eval_mode: Called before evaluation and saving (schedule-free switches to x), or None.
        group_state_keys: Param-group entries that are optimizer state, not hyperparameters
            (schedule-free's averaging counters); universal checkpoints carry them over.
        before_step: Called as ``before_step(host, batches, iteration)`` before each step's
            forward/backward (Sophia's Hessian estimate), or None; ``host`` is a
            ``host.StepHost`` (the training engine satisfies it).
        pipeline: False when ``before_step`` needs the dense model (PP > 1 is refused).
        fp16: False when the optimizer is not correct under --fp16 (refused in the plan).
        derived_states: ``derived_states(state, group) -> {name: tensor}``: extra per-element
            tensors (shaped like the state) for the optimizer-state metrics, or None.
        after_initialize: Called as ``after_initialize(host)`` once ``deepspeed.initialize`` has
            wrapped the optimizer (Muon binds to the TP/ZeRO layout there), or None.
        reassembles_matrices: For ``param_policy="matrix"``: True when the matrix update
            reassembles matrices from TP shards and DeepSpeed's flat partitions itself (Muon, dshampoo);
            False refuses TP > 1 and bf16 pipelines in the plan.
        matrix_state_keys: Regex (full match) of the state keys that belong to a whole logical
            matrix rather than to its elements (dshampoo's blocks), or None. Universal
            checkpoints keep them whole; loading hands them to ``optimizer.load_matrix_states``,
            which places them on each matrix's owner rank.
    """

    name: str
    build: BuildFn
    options: type | None = None
    uses_lr_schedule: bool = True
    param_policy: Literal["elementwise", "matrix"] = "elementwise"
    max_zero_stage: int = 3
    train_mode: Callable[[Any], None] | None = None
    eval_mode: Callable[[Any], None] | None = None
    group_state_keys: tuple[str, ...] = ()
    before_step: Callable[[StepHost, list, int], None] | None = None
    pipeline: bool = True
    fp16: bool = True
    derived_states: Callable[[dict, dict], dict] | None = None
    after_initialize: Callable[[StepHost], None] | None = None
    reassembles_matrices: bool = False
    matrix_state_keys: str | None = None


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register_optimizer(name: str, **spec_fields: Any) -> Callable[[BuildFn], BuildFn]:
    """Decorator registering ``build`` under ``name``.

    Args:
        name: The ``--optimizer`` value.
        **spec_fields: The other ``OptimizerSpec`` fields.

    Returns:
        The decorator; it returns the build function unchanged.
    """

    def decorate(build: BuildFn) -> BuildFn:
        if name in OPTIMIZERS:
            raise ValueError(f"optimizer {name!r} registered twice")
        OPTIMIZERS[name] = OptimizerSpec(name=name, build=build, **spec_fields)
        return build

    return decorate


def get_optimizer_spec(name: str) -> OptimizerSpec:
    """Look up a registered optimizer.

    Raises:
        KeyError: Unknown name; the message lists the known ones.
    """
    if name not in OPTIMIZERS:
        raise KeyError(f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def optimizer_names() -> list[str]:
    """Every registered ``--optimizer`` value, sorted."""
    _ensure_loaded()
    return sorted(OPTIMIZERS)


def option_sections() -> dict[str, type]:
    """Flag prefix -> options dataclass, for every optimizer that has options."""
    _ensure_loaded()
    return {name: spec.options for name, spec in OPTIMIZERS.items() if spec.options is not None}


def default_options() -> dict[str, Any]:
    """Default instance of every optimizer's options dataclass, keyed by optimizer name."""
    return {name: cls() for name, cls in option_sections().items()}


def _ensure_loaded() -> None:
    # The package __init__ imports every optimizer module, which fills OPTIMIZERS.
    importlib.import_module("megatron.optimizer")
