"""Which ``scaled_dot_product_attention`` kernel the model's attention runs on.

Attention goes through torch SDPA, which picks a kernel per call (flash, memory-efficient,
cuDNN, or the unfused math path) from the device, dtype, head size, dropout and GQA. Megatron
users ask for flash with ``--use-flash-attn``; here that restricts SDPA to its flash kernel for
every training and evaluation step, and is an error at start where flash cannot run (for
example attention dropout on CPU), with torch's reason. Either way the kernel is reported once
at start, as the dispatcher chooses it for the model's per-rank attention shape.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from megatron.config.fields import ConfigError
from megatron.model.spec import GPTSpec

log = logging.getLogger(__name__)

KERNEL_NAMES = {
    0: "math (unfused)",
    1: "flash",
    2: "memory-efficient",
    3: "cuDNN",
    4: "fused (device-specific)",
}
"""``torch.nn.attention.SDPBackend`` values -> names in the start-up report."""

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sdpa_choice(
    spec: GPTSpec, tp: int, device: torch.device, dtype: str, flash_only: bool
) -> tuple[int, list[str]]:
    """The SDPA backend the dispatcher picks for one micro-batch row of this model's attention.

    Returns:
        The ``SDPBackend`` value (-1 when none can run) and torch's reasons for passing kernels
        over (its warnings).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, kv_heads = spec.num_attention_heads // tp, spec.num_key_value_heads // tp
    shape = (1, heads, spec.seq_length, spec.head_dim)
    q = torch.zeros(shape, device=device, dtype=_TORCH_DTYPES[dtype])
    kv = torch.zeros((1, kv_heads, *shape[2:]), device=device, dtype=q.dtype)
    restrict = sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if flash_only else contextlib.nullcontext()
    with restrict, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            choice = int(
                torch._fused_sdp_choice(
                    q,
                    kv,
                    kv,
                    None,
                    spec.attention_dropout,
                    spec.causal,
                    enable_gqa=heads != kv_heads,
                )
            )
        except RuntimeError:
            choice = -1
    reasons = [str(w.message).split(" (Triggered internally")[0] for w in caught]
    return choice, [r for r in reasons if r and not r.endswith("because:")]


def attention_context(
    spec: GPTSpec, tp: int, device: torch.device, dtype: str, use_flash_attn: bool
) -> Callable[[], AbstractContextManager]:
    """Report the attention kernel; return the context every step runs attention in.

    Raises:
        ConfigError: ``--use-flash-attn`` where SDPA's flash kernel cannot run.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    choice, reasons = sdpa_choice(spec, tp, device, dtype, flash_only=use_flash_attn)
    if use_flash_attn and choice != int(SDPBackend.FLASH_ATTENTION.value):
        why = "; ".join(reasons) or "no reason given by torch"
        raise ConfigError(
            f"--use-flash-attn: SDPA's flash kernel cannot run on {device.type} with {dtype}, head "
            f"dim {spec.head_dim}, attention dropout {spec.attention_dropout}: {why}; drop the flag "
            "(SDPA then picks the fastest kernel that can run)"
        )
    name = KERNEL_NAMES.get(choice, f"backend {choice}")
    log.info(
        "attention: SDPA %s kernel on %s (%s%s)",
        name,
        device.type,
        dtype,
        ", restricted by --use-flash-attn" if use_flash_attn else "",
    )
    if not use_flash_attn:
        return contextlib.nullcontext
    return lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])
