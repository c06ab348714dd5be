"""The Hugging Face model families we import: ``config.json`` -> our model flags, HF tensors ->
our canonical tensors.

One registered ``HFFamily`` per ``model_type``. ``flags(config)`` reads both config schemas
(transformers 4.x: ``rope_theta``, ``rope_scaling``, ``rotary_pct``, ``rotary_emb_base``; 5.x:
``rope_parameters`` with ``rope_type``, ``rope_theta``, ``partial_rotary_factor``) and refuses
any value without a faithful mapping, naming the key and value. ``tensors(flags)`` lists, for
each of our parameters, the HF tensors it is made of and how (see ``docs/import.md``):

- Llama/Mistral/Qwen2: q/k/v projections fused into our per-group ``[q heads of g, k_g, v_g]``
  rows, ``[gate; up]`` fused into ``dense_h_to_4h``;
- GPT-NeoX: the fused ``query_key_value`` is already our layout (per head ``[q_h, k_h, v_h]``);
- GPT-2: Conv1D weights are stored ``[in, out]`` (transposed), ``c_attn`` is ``[q; k; v]``.

Torch is only needed by the combine functions, when a tensor is read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from megatron.config.fields import ConfigError
from megatron.registry import Registry

if TYPE_CHECKING:
    import torch

Combine = Callable[[list["torch.Tensor"]], "torch.Tensor"]


@dataclass(frozen=True, slots=True)
class Recipe:
    """One of our parameters from HF tensors: ``combine([tensors of hf_names])``."""

    name: str
    hf_names: tuple[str, ...]
    combine: Combine


@dataclass(frozen=True, kw_only=True, slots=True)
class HFFamily:
    """An importable ``model_type``.

    Attributes:
        model_type: ``config.json``'s ``model_type``.
        hf_class: The ``transformers`` class.
        architecture: Our export target that gives the class back (``hf_arch.EXPORTERS``).
        flags: ``(Config) -> {flag: value}`` of the model (no vocabulary or tokenizer).
        tensors: ``(flags) -> [Recipe]``.
        prefixes: Prefixes the tensor names may carry (the first that names the embedding wins).
    """

    model_type: str
    hf_class: str
    architecture: str
    flags: Callable[[Config], dict[str, Any]]
    tensors: Callable[[dict[str, Any]], list[Recipe]]
    prefixes: tuple[str, ...] = ("",)


HF_FAMILIES: Registry[HFFamily] = Registry(
    "Hugging Face model_type (config.json)", "--input", loader="megatron.checkpointing.importing.hf_models"
)
"""``config.json``'s ``model_type`` of an ``--input`` directory -> family (``hf_models`` registers them)."""


def register_family(family: HFFamily) -> HFFamily:
    """Add ``family`` to the registry (a model_type registered twice is a ``ValueError``)."""
    return HF_FAMILIES.add(family.model_type, family)


class Config:
    """``config.json`` with errors that name the file and key."""

    def __init__(self, values: dict[str, Any], path: str):
        self.values, self.path = values, path
        self.limits: dict[str, dict[str, Any]] = {}
        """Flag -> ``{"max", "why"}``: bounds a run on the import must keep (``ImportSource.limits``)."""

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (``default`` when absent or null)."""
        value = self.values.get(key)
        return default if value is None else value

    def need(self, key: str) -> Any:
        """A required key's value."""
        if self.values.get(key) is None:
            raise ConfigError(f"--input: {self.path} has no {key!r}; it is needed to build the model")
        return self.values[key]

    def refuse(self, key: str, value: Any, why: str) -> ConfigError:
        """The error for a value without a faithful mapping."""
        return ConfigError(f"--input: {self.path}: {key}={value!r} {why}")

    def expect(self, key: str, allowed: tuple[Any, ...], default: Any, why: str = "") -> Any:
        """The value of ``key``, refused unless in ``allowed``."""
        value = self.get(key, default)
        if value not in allowed:
            raise self.refuse(key, value, why or f"has no faithful mapping (supported: {list(allowed)})")
        return value


# ---- RoPE (both schemas) -----------------------------------------------------------------------

LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def rope_flags(cfg: Config, *, default_partial: float = 1.0, scaling: bool = True) -> dict[str, Any]:
    """``--rotary-base``, ``--rotary-percent`` and the scaling flags of either config schema."""
    params = cfg.get("rope_parameters", {})
    if any(isinstance(v, dict) for v in params.values()):
        raise cfg.refuse("rope_parameters", params, "differs per layer type; we have one RoPE for every layer")
    legacy = cfg.get("rope_scaling", {})
    key, source = ("rope_scaling", legacy) if legacy else ("rope_parameters", params)
    theta = params.get("rope_theta", cfg.get("rope_theta", cfg.get("rotary_emb_base", 10000.0)))
    partial = params.get("partial_rotary_factor",
                         cfg.get("partial_rotary_factor", cfg.get("rotary_pct", default_partial)))
    flags: dict[str, Any] = {"--use-rotary-position-embeddings": True, "--rotary-base": float(theta),
                             "--rotary-percent": float(partial)}
    kind = source.get("rope_type", source.get("type", "default"))
    if kind == "default":
        return flags
    if not scaling or kind not in ("linear", "llama3"):
        supported = "default, linear, llama3" if scaling else "default"
        raise cfg.refuse(f"{key}.rope_type", kind, f"has no faithful mapping (supported: {supported})")
    factor = float(source.get("factor", 1.0))
    if kind == "linear":
        return {**flags, "--rotary-seq-len-interpolation-factor": factor}
    for name, fixed in LLAMA3_FIXED.items():
        if float(source.get(name, fixed)) != fixed:
            raise cfg.refuse(f"{key}.{name}", source.get(name), f"differs from Llama 3.1's {fixed} "
                             "(the only llama3 rule we implement)")
    return {**flags, "--use-rope-scaling": True, "--rope-scaling-factor": factor}


# ---- tensor combination ------------------------------------------------------------------------


def take(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The one HF tensor as is."""
    return tensors[0]


def transposed(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A Conv1D ``[in, out]`` weight as our ``[out, in]``."""
    return tensors[0].t().contiguous()


def cat0(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``[gate; up]``."""
    import torch

    return torch.cat(tensors, dim=0)


def fuse_qkv(kv_heads: int) -> Combine:
    """Separate q, k, v rows -> our per-group ``[q heads of g, k_g, v_g]`` rows."""

    def combine(tensors: list[torch.Tensor]) -> torch.Tensor:
        import torch

        q, k, v = tensors
        rest = q.shape[1:]
        hd = k.shape[0] // kv_heads
        grouped = [t.reshape(kv_heads, -1, hd, *rest) for t in (q, k, v)]
        return torch.cat(grouped, dim=1).reshape(-1, *rest)

    return combine


def split_fused_qkv(kv_heads: int, transpose: bool) -> Combine:
    """GPT-2's ``c_attn`` (``[q; k; v]``, Conv1D-transposed weight) -> our rows."""
    fuse = fuse_qkv(kv_heads)

    def combine(tensors: list[torch.Tensor]) -> torch.Tensor:
        fused = tensors[0].t() if transpose else tensors[0]
        return fuse(list(fused.chunk(3, dim=0))).contiguous()

    return combine


def norm_recipes(ours: str, hf: str, layernorm: bool) -> list[Recipe]:
    """A norm's weight (and LayerNorm's bias)."""
    keys = ("weight", "bias") if layernorm else ("weight",)
    return [Recipe(f"{ours}.{k}", (f"{hf}.{k}",), take) for k in keys]


def head_recipe(flags: dict[str, Any], *names: str) -> list[Recipe]:
    """The untied output head (nothing when tied: HF files may still hold a copy)."""
    if not flags["--untie-embeddings-and-output-weights"]:
        return []
    return [Recipe("output.output_layer.weight", names, take)]
