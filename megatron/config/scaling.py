"""Scaling recipes (muP, CompleteP, depth-muP): base shapes, multipliers and legacy spellings.

The recipe is off by default and nothing turns it on behind the user's back. Width and depth
multipliers are derived from explicit base shapes in ``megatron/scaling/recipes.py`` (called by
``resolve``); the legacy flags of Megatron-LM and of the ALCF fork's muP patch are accepted only
when they agree with the derived values. Formulas: ``docs/mup.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron.config.fields import SECTION, ConfigError, knob, require_positive

Recipe = Literal["none", "mup", "completep", "depth_mup"]

# Legacy per-group scale flags of the ALCF fork's muP patch (checked against derived values).
LEGACY_SCALES = (
    "mup_input_weights_scale",
    "mup_hidden_weights_scale",
    "mup_output_weights_scale",
    "mup_input_lr_scale",
    "mup_hidden_lr_scale",
    "mup_output_lr_scale",
)


@dataclass(**SECTION)
class ScalingConfig:
    """Hyper-parameter transfer across width and depth (muP / CompleteP) for Adam(W)."""

    scaling_recipe: Recipe = "none"
    """Parametrization: none (standard), mup (width), completep (width + depth, alpha 1), depth_mup (width + depth, --depth-alpha)."""
    mup_base_hidden_size: int | None = knob(None, aliases=("--scaling-base-hidden-size",))
    """Hidden size the hyper-parameters were tuned at (m_N = hidden / base); required by every recipe."""
    mup_base_num_layers: int | None = knob(
        None, aliases=("--scaling-base-num-layers", "--depth-base")
    )
    """Number of layers the hyper-parameters were tuned at (m_L = layers / base); required by completep and depth_mup."""
    mup_base_head_dim: int | None = knob(None, aliases=("--scaling-base-head-dim",))
    """Head dim of the base model: attention scale sqrt(base)/d_head^power (equals 1/sqrt(d_head) at the base shape); default 1/d_head^power."""
    mup_embedding_mult: float = 1.0
    """alpha_in: multiplier of the embedding output."""
    mup_output_mult: float = 1.0
    """alpha_out: the head input is multiplied by alpha_out / m_N."""
    mup_attn_scale_power: float = 1.0
    """Attention logits are scaled by 1/d_head^power (muP: 1; standard: 0.5)."""
    depth_alpha: float | None = None
    """Residual branches are multiplied by m_L^-alpha; completep fixes 1, depth_mup needs a value in [0.5, 1]."""
    mup_weight_decay: Literal["independent", "coupled"] = "independent"
    """Hidden-matrix weight decay: independent = lambda*m_N (lr*wd width-independent, Table 1), coupled = lambda."""
    mup_output_lr: Literal["base", "scaled"] = "base"
    """Untied output head LR: base = eta (Table 1; the 1/m_N is in the forward), scaled = eta/m_N."""
    mup_eps_scope: Literal["blocks", "all", "matrices"] = "blocks"
    """Which groups get the scaled Adam epsilon: blocks = hidden matrices, biases and block norms (Table 1), all = every group, matrices = hidden matrices only."""
    scaling_block_out_proj_init_depth_power: float | None = None
    """Output projections init std sigma/sqrt(m_N) * (2L)^-power; default 0.5 for mup, 0 for completep/depth_mup."""
    mup_coord_check: bool = False
    """Log the mean |activation| of the embedding, every attention/MLP output, the last block and the logits for the first 20 iterations."""
    use_mup: bool = knob(False, aliases=("--enable-mup",))
    """Legacy spelling (Megatron-LM --use-mup, ALCF --enable-mup): the same as --scaling-recipe mup."""
    enable_depth_scale: bool = False
    """Legacy spelling (ALCF): with muP, the same as --scaling-recipe depth_mup."""
    mup_width_mult: float | None = None
    """Legacy: must equal --hidden-size / --mup-base-hidden-size (checked)."""
    depth_multiplier: float | None = None
    """Legacy (ALCF): must equal --num-layers / --mup-base-num-layers (checked)."""
    mup_input_weights_scale: float | None = None
    """Legacy (ALCF): divisor of the embedding init variance; accepted only when it equals the derived 1."""
    mup_hidden_weights_scale: float | None = None
    """Legacy (ALCF): divisor of the hidden init variance; accepted only when it equals the derived m_N."""
    mup_output_weights_scale: float | None = None
    """Legacy (ALCF): divisor of the head logits (alpha_out/m_N inverted); accepted only when it equals the derived m_N/alpha_out."""
    mup_input_lr_scale: float | None = None
    """Legacy (ALCF): divisor of the embedding LR; accepted only when it equals the derived 1."""
    mup_hidden_lr_scale: float | None = None
    """Legacy (ALCF): divisor of the hidden-matrix LR; accepted only when it equals the derived m_N*m_L^(1-alpha)."""
    mup_output_lr_scale: float | None = None
    """Legacy (ALCF): divisor of the output-head LR; accepted only when it equals the derived value (1, or m_N with --mup-output-lr scaled)."""

    def __post_init__(self) -> None:
        require_positive(
            self,
            "mup_base_hidden_size",
            "mup_base_num_layers",
            "mup_base_head_dim",
            "mup_embedding_mult",
            "mup_output_mult",
            "mup_attn_scale_power",
            "mup_width_mult",
            "depth_multiplier",
            *LEGACY_SCALES,
        )
        recipe = self.recipe
        if self.scaling_recipe == "mup" and self.enable_depth_scale:
            raise ConfigError(
                "--enable-depth-scale: contradicts --scaling-recipe mup (width only); use "
                "--scaling-recipe depth_mup or completep"
            )
        if recipe == "none":
            self._check_unused()
            return
        if self.mup_base_hidden_size is None:
            raise ConfigError(
                f"--mup-base-hidden-size: --scaling-recipe {recipe} needs the hidden size the "
                "hyper-parameters were tuned at (MUP_BASE_WIDTH for train_alcf.sh)"
            )
        depth = recipe in ("completep", "depth_mup")
        if depth and self.mup_base_num_layers is None:
            raise ConfigError(
                f"--mup-base-num-layers: --scaling-recipe {recipe} needs the number of layers the "
                "hyper-parameters were tuned at (DEPTH_BASE for train_alcf.sh)"
            )
        if not depth:
            for name in ("mup_base_num_layers", "depth_multiplier", "depth_alpha"):
                if getattr(self, name) is not None:
                    flag = "--" + name.replace("_", "-")
                    raise ConfigError(
                        f"{flag}: only used by --scaling-recipe completep/depth_mup, not {recipe}"
                    )
        self._check_alpha(recipe)

    def _check_alpha(self, recipe: str) -> None:
        if recipe == "completep" and self.depth_alpha not in (None, 1.0):
            raise ConfigError(
                f"--depth-alpha: {self.depth_alpha} contradicts --scaling-recipe completep "
                "(alpha = 1); use --scaling-recipe depth_mup for another alpha"
            )
        if recipe == "depth_mup":
            if self.depth_alpha is None:
                raise ConfigError(
                    "--depth-alpha: --scaling-recipe depth_mup needs alpha in [0.5, 1] "
                    "(completep is depth_mup with alpha 1)"
                )
            if not 0.5 <= self.depth_alpha <= 1.0:
                raise ConfigError(f"--depth-alpha: must be in [0.5, 1], got {self.depth_alpha}")

    def _check_unused(self) -> None:
        """With no recipe, a scaling flag would silently do nothing: refuse it."""
        given = [
            name
            for name in (
                "mup_base_hidden_size",
                "mup_base_num_layers",
                "mup_base_head_dim",
                "depth_alpha",
                "scaling_block_out_proj_init_depth_power",
                "mup_width_mult",
                "depth_multiplier",
                *LEGACY_SCALES,
            )
            if getattr(self, name) is not None
        ]
        given += [
            name
            for name, default in (
                ("mup_embedding_mult", 1.0),
                ("mup_output_mult", 1.0),
                ("mup_attn_scale_power", 1.0),
                ("mup_weight_decay", "independent"),
                ("mup_output_lr", "base"),
                ("mup_eps_scope", "blocks"),
            )
            if getattr(self, name) != default
        ]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ConfigError(
                f"{flag}: has no effect without a scaling recipe; add --scaling-recipe "
                "mup/completep/depth_mup (or --use-mup) or drop it"
            )

    @property
    def recipe(self) -> str:
        """The effective recipe after the legacy switches (--use-mup, --enable-depth-scale)."""
        recipe = self.scaling_recipe
        if recipe == "none" and self.enable_depth_scale:
            return "depth_mup"
        if recipe == "none" and self.use_mup:
            return "mup"
        return recipe
