"""Parallel layout: tensor, pipeline and data parallelism, ZeRO, communication backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron.config.fields import SECTION, require, require_positive


@dataclass(**SECTION)
class ParallelConfig:
    """How the model and data are split across processes. Data parallel = world / (TP x PP)."""

    tensor_model_parallel_size: int = 1
    """Tensor-parallel size (megatron-core column/row-parallel layers)."""
    pipeline_model_parallel_size: int = 1
    """Pipeline-parallel size (DeepSpeed PipelineModule stages)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism: norms, dropout and residuals run on seq/TP positions per TP rank (all-gather before, reduce-scatter after the TP GEMMs); needs --tensor-model-parallel-size > 1."""
    ds_sequence_parallel_size: int = 1
    """DeepSpeed-Ulysses sequence parallelism: each of N ranks holds seq/N positions, attention runs on heads/N after an all-to-all (launcher SP=N); world = TP x PP x SP x DP, and gradients are reduced over DP x SP."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage (0-3). ZeRO-2/3 cannot be combined with pipeline parallelism."""
    cpu_optimizer: bool = False
    """Offload optimizer states and the optimizer step to the CPU (ZeRO-Offload; ZeRO >= 1)."""
    deepspeed_config: str | None = None
    """A DeepSpeed JSON with extra keys we do not own (ZeRO sub-options, communication tuning); keys the flags own may repeat the flags' values (logged), never differ."""
    distributed_backend: Literal["auto", "nccl", "gloo", "xccl", "ccl"] = "auto"
    """torch.distributed backend; auto = nccl on CUDA, xccl (else oneCCL's ccl) on Intel XPU, gloo on CPU."""
    distributed_timeout_minutes: int = 30
    """Timeout of collective operations."""

    def __post_init__(self) -> None:
        require_positive(
            self,
            "tensor_model_parallel_size",
            "pipeline_model_parallel_size",
            "ds_sequence_parallel_size",
            "distributed_timeout_minutes",
        )
        require(
            self.zero_stage in (0, 1, 2, 3), "--zero-stage", f"must be 0-3, got {self.zero_stage}"
        )
        require(
            not (self.cpu_optimizer and self.zero_stage == 0),
            "--cpu-optimizer",
            "needs --zero-stage 1, 2 or 3 (ZeRO-Offload)",
        )
        require(
            not (self.zero_stage >= 2 and self.pipeline_model_parallel_size > 1),
            "--zero-stage",
            f"{self.zero_stage} cannot be combined with --pipeline-model-parallel-size "
            f"{self.pipeline_model_parallel_size} (DeepSpeed's pipeline engine supports ZeRO 0-1)",
        )
        require(
            not (self.sequence_parallel and self.tensor_model_parallel_size == 1),
            "--sequence-parallel",
            "needs --tensor-model-parallel-size > 1 (it splits the sequence over the TP group); "
            "drop the flag or raise the TP size",
        )
