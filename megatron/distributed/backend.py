"""Which accelerator this process runs on, which torch.distributed backend talks between them,
and every device call (set_device, synchronize, memory statistics) routed to the right module.

One function, ``pick_accelerator``, decides, so CUDA (NCCL), Intel XPU (``xccl``, or ``ccl``
through oneCCL's bindings on older torch builds; ALCF Aurora) and CPU (gloo) runs take the
same path through the code. The device kind follows DeepSpeed's: ``DS_ACCELERATOR`` when set
(DeepSpeed places the model on that device, so ours must agree), else what torch finds
(CUDA, then XPU, then CPU). An explicit ``--distributed-backend`` that cannot drive that device
is an error before any process group starts.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import torch
import torch.distributed as dist

from megatron.config.fields import ConfigError

log = logging.getLogger(__name__)

DeviceKind = Literal["cuda", "xpu", "cpu"]

BACKENDS: dict[str, tuple[str, ...]] = {
    "cuda": ("nccl", "gloo"),
    "xpu": ("xccl", "ccl"),
    "cpu": ("gloo", "ccl"),
}
"""Backends that can run collectives on each device's tensors, the automatic choice first (XPU
falls back to ``ccl`` when this torch build has no ``xccl``)."""


@dataclass(frozen=True, slots=True)
class Accelerator:
    """The device family of this process and the calls that go with it.

    Attributes:
        kind: ``cuda``, ``xpu`` or ``cpu``.
        backend: The torch.distributed backend for this run.
    """

    kind: DeviceKind
    backend: str

    @property
    def module(self) -> ModuleType | None:
        """``torch.cuda`` or ``torch.xpu`` (None on CPU)."""
        return None if self.kind == "cpu" else getattr(torch, self.kind)

    def device(self, local_rank: int) -> torch.device:
        """This process's device: one per local rank on accelerators, the CPU otherwise."""
        return torch.device("cpu") if self.kind == "cpu" else torch.device(self.kind, local_rank)

    def set_device(self, device: torch.device) -> None:
        """Make ``device`` the current one (no-op on CPU)."""
        if self.module is not None:
            self.module.set_device(device)


def device_module(device: torch.device) -> ModuleType | None:
    """``torch.cuda`` / ``torch.xpu`` for an accelerator device, None for the CPU."""
    return None if device.type == "cpu" else getattr(torch, device.type, None)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (no-op on CPU)."""
    module = device_module(device)
    if module is not None:
        module.synchronize(device)


def device_name(device: torch.device) -> str:
    """The device's product name (``NVIDIA H200``, ``Intel(R) Data Center GPU Max 1550``, ``cpu``)."""
    module = device_module(device)
    return "cpu" if module is None else module.get_device_name(device)


def max_memory_allocated(device: torch.device) -> int | None:
    """Peak bytes allocated by tensors on ``device`` since start (None on CPU)."""
    module = device_module(device)
    return None if module is None else int(module.max_memory_allocated(device))


def _xpu_available() -> bool:
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def detect_kind(ds_accelerator: str | None) -> DeviceKind:
    """The device kind: ``DS_ACCELERATOR`` if set (checked against what torch sees), else the
    first of CUDA, XPU, CPU that torch finds.

    Raises:
        ConfigError: ``DS_ACCELERATOR`` names a device torch cannot use or one we do not support.
    """
    available = {"cuda": torch.cuda.is_available(), "xpu": _xpu_available(), "cpu": True}
    if ds_accelerator is None:
        return next(kind for kind in ("cuda", "xpu", "cpu") if available[kind])
    if ds_accelerator not in available:
        raise ConfigError(
            f"DS_ACCELERATOR={ds_accelerator}: not supported here; use cuda, xpu or cpu (or unset it)"
        )
    if not available[ds_accelerator]:
        raise ConfigError(
            f"DS_ACCELERATOR={ds_accelerator}: torch finds no {ds_accelerator} device in this "
            "process; unset DS_ACCELERATOR or point it at the device this machine has"
        )
    return ds_accelerator  # type: ignore[return-value]


def _backend_installed(backend: str) -> bool:
    if backend == "xccl":
        return bool(getattr(dist, "is_xccl_available", lambda: False)())
    if backend == "ccl":
        return importlib.util.find_spec("oneccl_bindings_for_pytorch") is not None
    if backend == "nccl":
        return dist.is_nccl_available()
    return dist.is_gloo_available()


def pick_accelerator(requested: str, ds_accelerator: str | None = None) -> Accelerator:
    """Device kind and distributed backend for this run.

    Args:
        requested: ``--distributed-backend`` (``auto``, or a backend name).
        ds_accelerator: ``DS_ACCELERATOR`` (None when unset).

    Returns:
        The accelerator; ``auto`` becomes nccl on CUDA, xccl (else ccl) on XPU, gloo on CPU.

    Raises:
        ConfigError: The requested backend cannot drive this device or is not installed.
    """
    kind = detect_kind(ds_accelerator)
    usable = BACKENDS[kind]
    if requested == "auto":
        installed = [b for b in usable if _backend_installed(b)]
        if not installed:
            raise ConfigError(
                f"--distributed-backend: no backend for {kind} is installed (tried "
                f"{', '.join(usable)}); on Intel GPUs use a torch with xccl or install "
                "oneccl_bindings_for_pytorch"
            )
        return Accelerator(kind=kind, backend=installed[0])
    if requested not in usable:
        raise ConfigError(
            f"--distributed-backend: {requested} cannot run collectives on {kind} tensors "
            f"(this process runs on {kind}); use {' or '.join(usable)}, or auto"
        )
    if not _backend_installed(requested):
        hint = "install oneccl_bindings_for_pytorch" if requested == "ccl" else "use auto"
        raise ConfigError(f"--distributed-backend: {requested} is not available in this torch build; {hint}")
    return Accelerator(kind=kind, backend=requested)


def check_deepspeed_agrees(accelerator: Accelerator) -> None:
    """DeepSpeed moves the model to its own accelerator's device; refuse a disagreement.

    Raises:
        ConfigError: DeepSpeed detected another accelerator than ours.
    """
    from deepspeed.accelerator import get_accelerator

    theirs = get_accelerator()._name  # noqa: SLF001  (no public getter for the kind)
    if theirs != accelerator.kind:
        raise ConfigError(
            f"DS_ACCELERATOR: DeepSpeed uses the {theirs} accelerator but this process runs on "
            f"{accelerator.kind}; set DS_ACCELERATOR={accelerator.kind}"
        )
