"""Cross-section checks of ``--fused-linear-cross-entropy`` (called by ``resolve``). Torch-free.

The fused path replaces ``logits -> token_losses`` inside the dense model's forward when it is
given labels; it returns the same per-token losses, so every objective's weighting (loss mask,
masked diffusion's 1/p, the per-corpus meter) and EWC work unchanged. A consumer that needs
the logits themselves, or a layout where the loss is not computed by the dense forward, would
silently fall back to the unfused loss: those combinations are refused here by name.
"""

from __future__ import annotations

from typing import Any

from megatron.config.fields import ConfigError


def check_fused_loss(cfg: Any, pp: int) -> None:
    """Refuse ``--fused-linear-cross-entropy`` where it could not take effect.

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
