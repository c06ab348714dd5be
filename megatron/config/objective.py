"""The training objective: autoregressive (``ar``) or masked diffusion (``mdm``) and its knobs.

The objectives themselves are entries of ``megatron/objectives`` (a registry); this section only
holds the values. Masked diffusion follows Nie et al., "Scaling up Masked Diffusion Models on
Text" (arXiv 2410.18514) and Prabhudesai et al., "Diffusion Beats Autoregressive in
Data-Constrained Settings" (arXiv 2507.15857); see docs/diffusion.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron.config.fields import (
    SECTION,
    ConfigError,
    knob,
    require,
    require_positive,
    require_ratio,
)

AUTO = "auto"


@dataclass(**SECTION)
class ObjectiveConfig:
    """What the model is trained to predict."""

    objective: str = knob("ar", names="megatron.objectives.registry:OBJECTIVES")
    """Training objective: ar (next-token prediction, causal attention) or mdm (masked diffusion:
    predict masked tokens from the rest, bidirectional attention; its loss is an upper bound on
    the per-token NLL)."""
    mdm_eps: float = 1e-3
    """mdm: masking probability floor; p = (1 - eps) t + eps for t ~ U(0, 1)."""
    mdm_mask_token_id: str = AUTO
    """mdm: id of the mask token; auto = the tokenizer's vocabulary size (the first spare row of
    the padded vocabulary). An explicit id must be a padded row no real token uses."""
    low_noise_start: bool = False
    """mdm: multiply t by --low-noise-ratio during the first --low-noise-iter steps."""
    low_noise_iter: int = 1000
    """mdm: steps of the low-noise warm start."""
    low_noise_ratio: float = 0.5
    """mdm: factor on t during the low-noise warm start."""
    ar_ratio: float = 0.0
    """mdm: per training sample, with this probability the masked positions move to the last k
    (k = the number masked; k = 0 masks nothing): an autoregressive-like control."""
    num_mc: int = 1
    """mdm: independent (t, mask) draws per validation sample, averaged (the paper uses 32)."""
    mdm_eval_stratified: bool = False
    """mdm: validation draws use stratified t = (u0 + k/K) mod 1 and eps = 0 (the lm-eval
    likelihood of the anchors) instead of independent t with --mdm-eps."""

    def __post_init__(self) -> None:
        require_positive(self, "low_noise_iter", "num_mc", "low_noise_ratio")
        require_ratio(self, "ar_ratio")
        require_ratio(self, "mdm_eps", closed=False)
        require(self.low_noise_ratio <= 1.0, "--low-noise-ratio",
                f"must be in (0, 1] (a factor on t), got {self.low_noise_ratio}")
        if self.mdm_mask_token_id != AUTO and not self.mdm_mask_token_id.isdigit():
            raise ConfigError(
                f"--mdm-mask-token-id: expected 'auto' or a non-negative integer, got "
                f"{self.mdm_mask_token_id!r}"
            )
