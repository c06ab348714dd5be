"""Batch sizes, run length, precision and the training loop's intervals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron.config.fields import SECTION, ConfigError, require_positive


@dataclass(**SECTION)
class TrainConfig:
    """Batch and run length. Give the global batch or the accumulation steps, and one run length."""

    micro_batch_size: int = 1
    """Samples per forward/backward on one data-parallel rank."""
    global_batch_size: int | None = None
    """Samples per optimizer step over all data-parallel ranks; gradient accumulation is derived."""
    gradient_accumulation_steps: int | None = None
    """Micro-batches per optimizer step; the global batch is derived. Default 1."""
    train_iters: int | None = None
    """Optimizer steps to train for."""
    train_samples: int | None = None
    """Samples to train on; iterations = ceil(samples / global batch)."""
    train_tokens: int | None = None
    """Tokens to train on; iterations = ceil(tokens / (global batch * seq length))."""
    epochs: float | None = None
    """Passes over the --unique-tokens subset; iterations = ceil(epochs * subset samples / global batch)."""
    seed: int = 1234
    """Random seed (initialization, data order, dropout)."""
    bf16: bool = False
    """bfloat16 mixed precision (DeepSpeed bf16 with fp32 master weights)."""
    fp16: bool = False
    """float16 mixed precision with dynamic loss scaling."""
    accumulate_allreduce_grads_in_fp32: bool = False
    """With --bf16 at --zero-stage 1: accumulate gradients in fp32 (DeepSpeed grad_accum_dtype fp32)."""
    eval_interval: int = 1000
    """Evaluate on the validation set every this many iterations (and at the end)."""
    eval_iters: int = 100
    """Global batches per evaluation."""
    exit_interval: int | None = None
    """Save and exit when the iteration is a multiple of this."""
    exit_duration_in_mins: float | None = None
    """Save and exit after this many minutes of training (e.g. before a job's walltime)."""
    kill_switch_file: str | None = None
    """Save and exit as soon as this file exists."""
    skip_train: bool = False
    """Evaluate only: load --load's weights, report the validation and test loss on the given data lists and exit; nothing is trained or saved."""
    max_nonfinite_steps: int = 3
    """A step whose loss or gradient norm is NaN/inf skips its update; this many in a row stop the run (exit 1, no checkpoint). 0 turns the check off (it reads one flag on the host per step)."""
    compile: bool = False
    """Compile each transformer layer with torch.compile (regional: DeepSpeed, TP and PP stay eager around the layers); the compiling step's time is logged apart from tokens/s."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    """torch.compile mode with --compile (inductor backend only)."""
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    """torch.compile backend with --compile: inductor generates kernels; aot_eager/eager only trace (to debug graph breaks or numerics)."""

    def __post_init__(self) -> None:
        require_positive(
            self,
            "micro_batch_size",
            "global_batch_size",
            "gradient_accumulation_steps",
            "train_iters",
            "train_samples",
            "train_tokens",
            "epochs",
            "eval_interval",
            "exit_interval",
            "exit_duration_in_mins",
        )
        if self.max_nonfinite_steps < 0:
            raise ConfigError(f"--max-nonfinite-steps: must be >= 0, got {self.max_nonfinite_steps}")
        if self.eval_iters < 0:
            raise ConfigError(f"--eval-iters: must be >= 0, got {self.eval_iters}")
        if self.bf16 and self.fp16:
            raise ConfigError("--bf16: cannot be combined with --fp16; pick one precision")
        if self.compile_mode != "default" and not (self.compile and self.compile_backend == "inductor"):
            raise ConfigError(
                f"--compile-mode: {self.compile_mode} needs --compile with --compile-backend inductor"
            )
        if self.compile_backend != "inductor" and not self.compile:
            raise ConfigError("--compile-backend: has no effect without --compile; add --compile")
