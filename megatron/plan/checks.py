"""The cross-section refusals of the plan (called by ``resolve``, before any heavy work), each an
error naming the flag pair: the ZeRO stage, precision, pipeline, matrix layouts and schedules an
optimizer is not correct under; EWC/LwF and the fused loss where they cannot take effect."""

from __future__ import annotations

from megatron.config.fields import ConfigError
from megatron.config.root import Config
from megatron.optimizer.registry import OptimizerSpec
from megatron.schedules.registry import ScheduleSpec


def check_optimizer(cfg: Config, spec: OptimizerSpec, schedule: ScheduleSpec) -> None:
    """Refuse optimizer/layout/precision/schedule pairs that would train wrongly, by flag
    (``spec``: the ``--optimizer`` entry; ``schedule``: the LR schedule's entry)."""
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
    if not spec.uses_lr_schedule and schedule.decays:
        raise ConfigError(
            f"--lr-decay-style: {schedule.name} decays the LR, but {spec.name} is schedule-free; use "
            "--lr-decay-style constant without a cooldown (warmup allowed)"
        )


def _check_matrix_layout(cfg: Config, spec: OptimizerSpec) -> None:
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


def check_regularizers(cfg: Config, pp: int) -> None:
    """Cross-section checks of EWC/LwF, before any work (called by ``resolve``).

    Raises:
        ConfigError: No checkpoint to anchor on, pipeline parallelism, or ZeRO-3.
    """
    reg = cfg.regularize
    for on, flag, what in ((reg.ewc, "--ewc-weight", "EWC"), (reg.lwf, "--lwf-weight", "LwF")):
        if not on:
            continue
        if cfg.checkpoint.load is None:
            raise ConfigError(f"{flag}: {what} anchors on the weights a stage starts from; give --load "
                              "(the previous stage's checkpoint, usually with --finetune)")
        if pp > 1:
            raise ConfigError(f"{flag}: {what} is not supported with --pipeline-model-parallel-size "
                              f"{pp} (its extra loss term needs the dense forward); use PP=1")
        if cfg.parallel.zero_stage == 3:
            raise ConfigError(f"{flag}: {what} is not supported at --zero-stage 3 (partitioned "
                              "parameters have no full local copy to anchor on); use ZeRO-0/1/2")


def check_fused_loss(cfg: Config, pp: int) -> None:
    """Refuse ``--fused-linear-cross-entropy`` where it could not take effect.

    The fused path replaces ``logits -> token_losses`` inside the dense model's forward and
    returns the same per-token losses, so every objective's weighting and EWC work unchanged. A
    consumer that needs the logits themselves (LwF), or a layout where the dense forward does not
    compute the loss, would silently fall back to the unfused loss: those are refused by name.

    Args:
        cfg: The typed ``Config``.
        pp: The pipeline-parallel size.

    Raises:
        ConfigError: With LwF, pipeline parallelism or ZeRO-3.
    """
    if not cfg.model.fused_linear_cross_entropy:
        return
    flag = "--fused-linear-cross-entropy"
    if cfg.regularize.lwf:
        raise ConfigError(
            f"{flag}: LwF (--lwf-weight {cfg.regularize.lwf_weight}) distills from the student's "
            "full logits, which the fused loss never forms; drop one of the two flags"
        )
    if pp > 1:
        raise ConfigError(
            f"{flag}: not supported with --pipeline-model-parallel-size {pp} (the last stage's "
            "loss function receives logits from DeepSpeed's pipeline); use PP=1 or drop the flag"
        )
    if cfg.parallel.zero_stage == 3:
        raise ConfigError(
            f"{flag}: not supported at --zero-stage 3 (the fused loss reads the head weight "
            "outside the head module, where ZeRO-3 has not gathered it); use ZeRO-0/1/2"
        )
