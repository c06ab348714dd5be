"""``RunPlan``: the resolved run, every derived value and the registry entries it uses.

Built once by ``megatron.plan.resolve.resolve``; everything after reads its fields instead of
deriving or looking up again. Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from megatron.config.root import Config
from megatron.model.spec import GPTSpec
from megatron.objectives.registry import ObjectiveSpec
from megatron.optimizer.registry import OptimizerSpec
from megatron.scaling.recipes import Scaling
from megatron.schedules.registry import ScheduleSpec


@dataclass(frozen=True, kw_only=True, slots=True)
class RunPlan:
    """The resolved run.

    Attributes:
        config: The typed config it was resolved from.
        world_size: Processes.
        tp: Tensor-parallel size.
        pp: Pipeline-parallel size.
        dp: Data-parallel size = world / (tp * pp * sp).
        micro_batch_size: Samples per micro-batch per DP rank.
        grad_accum_steps: Micro-batches per optimizer step.
        global_batch_size: micro * accum * dp samples per step.
        seq_length: Tokens per sample.
        tokens_per_step: global batch * seq length.
        train_iters: Optimizer steps of the run.
        warmup_steps: LR warmup steps W (real-valued from a fraction, samples or tokens).
        decay_steps: Step S at which the decay ends (real-valued from samples or tokens).
        min_lr_ratio: eta_min / eta_max.
        dtype: Parameter/compute precision.
        model: The resolved model shape.
        unique_samples: Samples in the ``--unique-tokens`` subset (data-constrained runs), else None.
        deepspeed: The DeepSpeed config dict (generated, with the user's JSON merged in).
        sources: ``{flag: {"value", "source"}}`` of every value some config layer set.
        scaling: The scaling recipe's derived multipliers (muP / CompleteP; neutral for none).
        objective: The registered ``--objective`` entry.
        optimizer: The registered ``--optimizer`` entry.
        schedule: The registered schedule entry (``--lr-decay-style``, ``--lr-finder``, WSD).
        schedule_state: The schedule as data, ``{"name", "kwargs", "lr"}`` (stored in checkpoints).
        sp: DeepSpeed-Ulysses sequence-parallel size (``--ds-sequence-parallel-size``; 1 = off).
    """

    config: Config
    world_size: int
    tp: int
    pp: int
    dp: int
    micro_batch_size: int
    grad_accum_steps: int
    global_batch_size: int
    seq_length: int
    tokens_per_step: int
    train_iters: int
    warmup_steps: int | float
    decay_steps: int | float
    min_lr_ratio: float
    dtype: Literal["fp32", "bf16", "fp16"]
    model: GPTSpec
    objective: ObjectiveSpec
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    unique_samples: int | None = None
    deepspeed: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    scaling: Scaling = field(default_factory=Scaling)
    schedule_state: dict[str, Any] = field(default_factory=dict)
    sp: int = 1

    def summary(self) -> dict[str, Any]:
        """The derived values (not the config) as a flat dict, for logs and checkpoints."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("config", "model", "deepspeed", "sources", "objective", "optimizer", "schedule",
                     "schedule_state"):
            out.pop(name)
        out["scaling"] = self.scaling.summary()
        out["num_parameters"] = self.model.num_parameters()
        out["padded_vocab_size"] = self.model.vocab_size
        out["flops_per_step"] = self.model.flops_per_token() * self.tokens_per_step
        out["objective"] = self.config.objective.objective
        out["attention_flops"] = self.objective.attention_flops
        out["layout"] = (f"world {self.world_size} = TP {self.tp} x SP {self.sp} x DP {self.dp} x PP "
                         f"{self.pp} (ranks in that order, TP fastest; ZeRO and gradients over DP x SP)")
        return out
