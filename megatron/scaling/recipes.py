"""Scaling recipes: a registry from ``--scaling-recipe`` to the width/depth rules, and the
multipliers a run derives from them once (``derive_scaling``, called by ``resolve``).

m_N = hidden / base hidden, m_L = layers / base layers, alpha the depth exponent. The rules
(Yang et al. 2022, arXiv 2203.03466, muP; Dey et al. 2025, arXiv 2505.01618 Table 1, CompleteP):

========================  =========  ===============  =========================
quantity                  standard   mup              completep / depth_mup
========================  =========  ===============  =========================
hidden init std           sigma      sigma/sqrt(m_N)  sigma/sqrt(m_N)
output-proj init std      /sqrt(2L)  /sqrt(2L m_N)    /sqrt(m_N)
embedding output          x          x * alpha_in     x * alpha_in
head input                h          h*alpha_out/m_N  h*alpha_out/m_N
residual branch           f          f                m_L^-alpha * f
attention logits          /sqrt(d)   /d (^power)      /d (^power)
========================  =========  ===============  =========================

The per-group LR / weight-decay / epsilon multipliers are in ``megatron/scaling/groups.py``.
Torch-free, so ``--dry-run`` prints them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from megatron.config.fields import ConfigError
from megatron.config.scaling import ScalingConfig
from megatron.registry import Registry


@dataclass(frozen=True, kw_only=True, slots=True)
class RecipeRules:
    """What a recipe scales.

    Attributes:
        width: Scales with m_N (init, head multiplier, hidden LR/eps/WD, attention 1/d).
        depth: Scales with m_L (residual multiplier, LR/eps depth factors).
        alpha: Depth exponent (0 when ``depth`` is False).
        out_proj_depth_power: Output projections init ``(2L)^-power`` (0.5: GPT-2's 1/sqrt(2L)).
    """

    width: bool
    depth: bool
    alpha: float
    out_proj_depth_power: float


RecipeFn = Callable[[ScalingConfig], RecipeRules]
SCALING_RECIPES: Registry[RecipeFn] = Registry("scaling recipe", "--scaling-recipe")
"""``--scaling-recipe`` value -> rules (every entry is registered in this module)."""


def register_recipe(name: str) -> Callable[[RecipeFn], RecipeFn]:
    """Decorator registering ``fn(scaling_cfg) -> RecipeRules`` as ``--scaling-recipe name``."""
    return SCALING_RECIPES.register(name)


@register_recipe("none")
def _standard(_: ScalingConfig) -> RecipeRules:
    return RecipeRules(width=False, depth=False, alpha=0.0, out_proj_depth_power=0.5)


@register_recipe("mup")
def _mup(_: ScalingConfig) -> RecipeRules:
    return RecipeRules(width=True, depth=False, alpha=0.0, out_proj_depth_power=0.5)


@register_recipe("completep")
def _completep(_: ScalingConfig) -> RecipeRules:
    # Depth is handled by the residual multiplier, so the 1/sqrt(2L) init is dropped.
    return RecipeRules(width=True, depth=True, alpha=1.0, out_proj_depth_power=0.0)


@register_recipe("depth_mup")
def _depth_mup(s: ScalingConfig) -> RecipeRules:
    assert s.depth_alpha is not None  # ScalingConfig requires it for depth_mup
    return RecipeRules(width=True, depth=True, alpha=s.depth_alpha, out_proj_depth_power=0.0)


@dataclass(frozen=True, kw_only=True, slots=True)
class Scaling:
    """The derived multipliers of a run (all 1 / standard for ``none``).

    Attributes:
        recipe: Effective recipe name.
        width_mult: m_N.
        depth_mult: m_L.
        alpha: Depth exponent.
        base_hidden_size: Base width (None without a recipe).
        base_num_layers: Base depth (None without a depth recipe).
        base_head_dim: Base head dim for the attention scale, or None.
        embedding_mult: alpha_in.
        output_mult: alpha_out (the head input is multiplied by alpha_out / m_N).
        attn_scale_power: Attention logits scaled by 1/d_head^power.
        out_proj_depth_power: Output projections init (2L)^-power.
        weight_decay: ``independent`` (lambda*m_N on hidden matrices) or ``coupled``.
        output_lr: ``base`` or ``scaled`` (untied head LR eta/m_N).
        eps_scope: ``blocks``, ``all`` or ``matrices``: groups with the scaled epsilon.
    """

    recipe: str = "none"
    width_mult: float = 1.0
    depth_mult: float = 1.0
    alpha: float = 0.0
    base_hidden_size: int | None = None
    base_num_layers: int | None = None
    base_head_dim: int | None = None
    embedding_mult: float = 1.0
    output_mult: float = 1.0
    attn_scale_power: float = 0.5
    out_proj_depth_power: float = 0.5
    weight_decay: str = "independent"
    output_lr: str = "base"
    eps_scope: str = "blocks"

    @property
    def active(self) -> bool:
        """A recipe other than ``none``."""
        return self.recipe != "none"

    @property
    def logit_mult(self) -> float:
        """Multiplier of the head input: alpha_out / m_N."""
        return self.output_mult / self.width_mult

    @property
    def residual_mult(self) -> float:
        """Residual-branch multiplier m_L^-alpha."""
        return self.depth_mult**-self.alpha

    def init_stds(self, sigma: float, num_layers: int) -> tuple[float, float]:
        """(hidden std, output-projection std) for base std ``sigma``."""
        hidden = sigma / math.sqrt(self.width_mult) if self.active else sigma
        # sqrt((2L)^(2p)) is exactly sqrt(2L) at p = 0.5: the standard init keeps its bits.
        return hidden, hidden / math.sqrt((2.0 * num_layers) ** (2 * self.out_proj_depth_power))

    def attention_scale(self, head_dim: int) -> float | None:
        """Softmax scale, or None for the standard 1/sqrt(d_head) (kept as None when equal, so
        the standard model's kernel call, and its bits, are unchanged at the base shape)."""
        if not self.active:
            return None
        scale = head_dim**-self.attn_scale_power
        if self.base_head_dim is not None:
            scale *= math.sqrt(self.base_head_dim)
        return None if math.isclose(scale, head_dim**-0.5, rel_tol=1e-12) else scale

    def summary(self) -> dict[str, Any]:
        """JSON-friendly record for logs and checkpoints."""
        return {**asdict(self), "logit_mult": self.logit_mult, "residual_mult": self.residual_mult}


def derive_scaling(s: ScalingConfig, hidden_size: int, num_layers: int) -> Scaling:
    """The multipliers of ``s`` for a model of ``hidden_size`` x ``num_layers``.

    Raises:
        ConfigError: A base larger than the model, or a legacy multiplier that disagrees with
            the derived one (the message names both values).
    """
    recipe = s.recipe
    rules = SCALING_RECIPES.get(recipe)(s)
    if recipe == "none":
        return Scaling()
    _check_base(s.mup_base_hidden_size, hidden_size, "--mup-base-hidden-size", "--hidden-size")
    width_mult = hidden_size / s.mup_base_hidden_size
    depth_mult = 1.0
    if rules.depth:
        _check_base(s.mup_base_num_layers, num_layers, "--mup-base-num-layers", "--num-layers")
        depth_mult = num_layers / s.mup_base_num_layers
    power = s.scaling_block_out_proj_init_depth_power
    scaling = Scaling(
        recipe=recipe,
        width_mult=width_mult,
        depth_mult=depth_mult,
        alpha=rules.alpha,
        base_hidden_size=s.mup_base_hidden_size,
        base_num_layers=s.mup_base_num_layers if rules.depth else None,
        base_head_dim=s.mup_base_head_dim,
        embedding_mult=s.mup_embedding_mult,
        output_mult=s.mup_output_mult,
        attn_scale_power=s.mup_attn_scale_power,
        out_proj_depth_power=rules.out_proj_depth_power if power is None else power,
        weight_decay=s.mup_weight_decay,
        output_lr=s.mup_output_lr,
        eps_scope=s.mup_eps_scope,
    )
    check_legacy(s, scaling)
    return scaling


def _check_base(base: int | None, size: int, flag: str, model_flag: str) -> None:
    assert base is not None  # ScalingConfig requires it for this recipe
    if base > size:
        raise ConfigError(
            f"{flag}: {base} is larger than {model_flag} {size}; the base is the (smaller) shape "
            f"the hyper-parameters were tuned at, so the multiplier {size}/{base} must be >= 1"
        )


def legacy_values(scaling: Scaling) -> dict[str, float]:
    """What each legacy flag must equal for ``scaling`` (field name -> derived value)."""
    m_n, m_l, a = scaling.width_mult, scaling.depth_mult, scaling.alpha
    return {
        "mup_width_mult": m_n,
        "depth_multiplier": m_l,
        "mup_input_weights_scale": 1.0,
        "mup_hidden_weights_scale": m_n,
        "mup_output_weights_scale": 1.0 / scaling.logit_mult,
        "mup_input_lr_scale": 1.0,
        "mup_hidden_lr_scale": m_n * m_l ** (1.0 - a),
        "mup_output_lr_scale": m_n if scaling.output_lr == "scaled" else 1.0,
    }


def check_legacy(s: ScalingConfig, scaling: Scaling) -> None:
    """Accept a legacy multiplier flag only when it equals the derived value.

    Raises:
        ConfigError: ``--flag: given X, but the base shapes give Y``.
    """
    for name, derived in legacy_values(scaling).items():
        given = getattr(s, name)
        if given is not None and not math.isclose(given, derived, rel_tol=1e-9):
            raise ConfigError(
                f"--{name.replace('_', '-')}: given {given:g}, but the base shapes give {derived:g} "
                f"(--hidden-size / --mup-base-hidden-size = {scaling.width_mult:g}, layers / base "
                f"= {scaling.depth_mult:g}); drop the flag or fix the base shape"
            )


# What a checkpoint's weights depend on: resuming under other values would change the function.
RECORDED = (
    "recipe",
    "base_hidden_size",
    "base_num_layers",
    "base_head_dim",
    "alpha",
    "embedding_mult",
    "output_mult",
    "attn_scale_power",
)


def check_resume_scaling(scaling: Scaling, saved: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint trained under another recipe, base shape or forward multiplier.

    Args:
        scaling: This run's multipliers.
        saved: The checkpoint's metadata (``plan.scaling`` is absent before muP existed: none).
        where: The checkpoint, for the message.

    Raises:
        ConfigError: Listing every difference.
    """
    before = (saved.get("plan") or {}).get("scaling") or Scaling().summary()
    now = scaling.summary()
    diffs = [
        f"{name}: checkpoint {before.get(name)!r}, this run {now[name]!r}"
        for name in RECORDED
        if before.get(name) != now[name]
    ]
    if diffs:
        raise ConfigError(
            f"--scaling-recipe: {where} was trained under another parametrization "
            f"({'; '.join(diffs)}); its weights only mean the same function under the "
            "checkpoint's recipe and base shapes: set those flags to the checkpoint's values"
        )
