"""The optimizer refusals of the plan: ZeRO stage, precision, pipeline, matrix layouts and
schedule pairs that an optimizer is not correct under, each an error naming the flag pair."""

from __future__ import annotations

from typing import Any

from megatron.config.fields import ConfigError
from megatron.config.root import Config


def check_optimizer(cfg: Config) -> None:
    """Refuse optimizer/layout/precision/schedule pairs that would train wrongly, by flag."""
    from megatron.optimizer.registry import get_optimizer_spec
    from megatron.schedules.registry import SCHEDULES, schedule_name

    spec = get_optimizer_spec(cfg.optim.optimizer)
    if cfg.parallel.zero_stage > spec.max_zero_stage:
        raise ConfigError(
            f"--optimizer: {spec.name} is not correct under --zero-stage "
            f"{cfg.parallel.zero_stage} (supports up to ZeRO-{spec.max_zero_stage}); use "
            f"--zero-stage {spec.max_zero_stage} or an element-wise optimizer such as adamw"
        )
    if cfg.logging.log_optimizer_states_to_tensorboard and cfg.parallel.zero_stage == 3:
        raise ConfigError(
            "--log-optimizer-states-to-tensorboard: not available under --zero-stage 3 (its "
            "parameters are partitioned); use --zero-stage 0-2 or drop the flag"
        )
    if not spec.fp16 and cfg.train.fp16:
        raise ConfigError(
            f"--fp16: {spec.name}'s extra backward runs without DeepSpeed's loss scaling, so its "
            "fp16 gradients can underflow; use --bf16 or fp32"
        )
    if not spec.pipeline and cfg.parallel.pipeline_model_parallel_size > 1:
        raise ConfigError(
            f"--optimizer: {spec.name} needs the dense model for its extra forward/backward, "
            f"which --pipeline-model-parallel-size {cfg.parallel.pipeline_model_parallel_size} "
            "splits into stages; use PP=1 (tensor or data parallelism) or another optimizer"
        )
    if spec.train_mode is not None and (cfg.train.bf16 or cfg.train.fp16):
        # DeepSpeed's mixed-precision wrappers hand the optimizer fp32 copies, so the optimizer's
        # eval()/train() weight swap would never reach the model that evaluates and saves.
        raise ConfigError(
            f"--optimizer: {spec.name} swaps its averaged weights into the model for evaluation "
            "and saving, which DeepSpeed's --bf16/--fp16 optimizer copies prevent; train it in fp32"
        )
    if spec.param_policy == "matrix":
        _check_matrix_layout(cfg, spec)
    style = schedule_name(cfg.schedule)
    if not spec.uses_lr_schedule and SCHEDULES[style].decays:
        raise ConfigError(
            f"--lr-decay-style: {style} decays the LR, but {spec.name} is schedule-free; use "
            "--lr-decay-style constant without a cooldown (warmup allowed)"
        )


def _check_matrix_layout(cfg: Config, spec: Any) -> None:
    """A matrix update needs whole matrices: refuse the layouts that split them, unless the
    optimizer reassembles them itself (Muon: TP shards, ZeRO-1/2 and bf16 flat partitions)."""
    par, pp = cfg.parallel, cfg.parallel.pipeline_model_parallel_size
    if par.tensor_model_parallel_size > 1 and not spec.reassembles_matrices:
        raise ConfigError(
            f"--optimizer: {spec.name} updates whole matrices, which "
            f"--tensor-model-parallel-size {par.tensor_model_parallel_size} splits; "
            "use TP=1 (with data or pipeline parallelism), --optimizer muon, or an element-wise optimizer"
        )
    if pp > 1 and cfg.train.bf16 and not spec.reassembles_matrices:
        raise ConfigError(
            f"--optimizer: {spec.name} with --pipeline-model-parallel-size > 1 needs fp32 "
            "(DeepSpeed's bf16 pipeline optimizer flattens the matrices); drop --bf16 or use PP=1"
        )
    if cfg.train.fp16 and (pp > 1 or par.zero_stage > 0):
        raise ConfigError(
            f"--fp16: {spec.name} with --pipeline-model-parallel-size {pp} --zero-stage "
            f"{par.zero_stage} is untested (fp16 is supported at PP=1 ZeRO-0); use --bf16 or fp32"
        )
