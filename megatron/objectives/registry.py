"""The objective registry: ``--objective NAME`` -> an ``ObjectiveSpec``.

An objective is one registered entry that owns everything that differs between, say,
next-token prediction and masked diffusion: how a read micro-batch becomes model inputs and
labels, whether attention is causal, how per-token losses reduce to the step loss (and into the
per-corpus meter), how many draws an evaluation averages, and what the metrics are called. The
trainer, engine and pipeline call these hooks; none of them branches on the objective's name.

This module and the entry modules are torch-free at import (``--dry-run`` and ``--help`` must
not import torch); hooks import torch when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from megatron.registry import Registry

if TYPE_CHECKING:
    from megatron.config.root import Config
    from megatron.model.spec import GPTSpec

BatchesFn = Callable[..., list]


class ObjectivePlan(Protocol):
    """What the objective hooks read of the run plan (``megatron.plan.run.RunPlan`` satisfies it;
    registries sit below the plan and never import it)."""

    config: Config
    global_batch_size: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectiveSpec:
    """One registered objective.

    Attributes:
        name: The ``--objective`` value.
        batches: ``batches(plan, reader, consumed, *, iteration, split, draw) -> list[Batch]``:
            this rank's micro-batches of the step that starts after ``consumed`` samples of
            ``split``, as model inputs/labels/loss weights (``draw``: the evaluation draw).
        causal: Causal attention (``GPTSpec.causal``).
        reduce: ``reduce(token_losses, loss_mask) -> scalar``: the micro-batch loss.
        meter_add: ``meter_add(meter, token_losses, loss_mask, dataset_ids)``: per-corpus sums,
            so that each corpus's value is this objective's loss restricted to its samples.
        check: ``check(config, model_spec)`` raises ``ConfigError`` for flags this objective
            cannot honour (torch-free; called by ``resolve``).
        eval_draws: ``eval_draws(config) -> K``: passes over the same validation samples.
        step_stats: ``step_stats(batches) -> {name: value}`` logged with each training report,
            or None.
        train_metric: TensorBoard/W&B name (under ``train/``) and console label of the
            training loss.
        eval_metric: Name of the evaluation value (under ``<split>/``).
        ppl_metric: Name of exp(evaluation value).
        eval_label: Console description of the evaluation value.
        attention_flops: Which attention work the FLOPs count (run plan, docs/design.md).
    """

    name: str
    batches: BatchesFn
    causal: bool
    reduce: Callable[[Any, Any], Any]
    meter_add: Callable[[Any, Any, Any, Any], None]
    check: Callable[[Config, GPTSpec], None]
    eval_draws: Callable[[Config], int]
    step_stats: Callable[[list], dict[str, float]] | None = None
    train_metric: str = "loss"
    eval_metric: str = "loss"
    ppl_metric: str = "ppl"
    eval_label: str = "loss"
    attention_flops: str = ""


OBJECTIVES: Registry[ObjectiveSpec] = Registry("objective", "--objective", loader="megatron.objectives")
"""``--objective`` value -> spec (the package ``__init__`` imports every entry module)."""


def register_objective(name: str, **spec_fields: Any) -> Callable[[BatchesFn], BatchesFn]:
    """Decorator registering an objective under ``name`` by its ``batches`` hook.

    Args:
        name: The ``--objective`` value.
        **spec_fields: The other ``ObjectiveSpec`` fields.

    Returns:
        The decorator; it returns the function unchanged.
    """

    def decorate(batches: BatchesFn) -> BatchesFn:
        OBJECTIVES.add(name, ObjectiveSpec(name=name, batches=batches, **spec_fields))
        return batches

    return decorate


def get_objective(name: str) -> ObjectiveSpec:
    """``OBJECTIVES.get(name)``.

    Raises:
        ConfigError: Unknown name (``--objective``, with the known ones).
    """
    return OBJECTIVES.get(name)


def eval_batches(objective: ObjectiveSpec, plan: ObjectivePlan, reader: Any, *, split: str, iteration: int):  # noqa: ANN201
    """Yield every evaluation step's micro-batches: ``--eval-iters`` global batches of ``split``
    (the same samples each evaluation), repeated for each of the objective's draws, so K draws
    really are K maskings of the same samples."""
    for draw in range(objective.eval_draws(plan.config)):
        for k in range(plan.config.train.eval_iters):
            yield objective.batches(plan, reader, k * plan.global_batch_size,
                                    iteration=iteration, split=split, draw=draw)
