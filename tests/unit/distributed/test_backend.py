"""One decision for device and distributed backend, with the device type mocked: CUDA -> nccl,
Intel XPU -> xccl (ccl without it), CPU -> gloo; an explicit --distributed-backend that cannot
drive the device, or a DS_ACCELERATOR torch cannot use, is refused by name."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from megatron.config import ConfigError
from megatron.distributed import backend as be


@pytest.fixture
def devices(monkeypatch):
    """Pretend which accelerators torch sees and which backends this build has."""

    def set_devices(*, cuda: bool = False, xpu: bool = False, xccl: bool = True, ccl: bool = False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.xpu, "is_available", lambda: xpu)
        monkeypatch.setattr(dist, "is_xccl_available", lambda: xccl, raising=False)
        monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
        real = be.importlib.util.find_spec
        monkeypatch.setattr(
            be.importlib.util, "find_spec",
            lambda name: object() if name == "oneccl_bindings_for_pytorch" and ccl else
            (None if name == "oneccl_bindings_for_pytorch" else real(name)),
        )

    return set_devices


@pytest.mark.parametrize(
    ("seen", "kind", "backend", "device"),
    [
        ({"cuda": True}, "cuda", "nccl", torch.device("cuda", 3)),
        ({"xpu": True}, "xpu", "xccl", torch.device("xpu", 3)),
        ({"xpu": True, "xccl": False, "ccl": True}, "xpu", "ccl", torch.device("xpu", 3)),
        ({}, "cpu", "gloo", torch.device("cpu")),
    ],
)
def test_auto_picks_the_backend_of_the_device(devices, seen, kind, backend, device):
    devices(**seen)
    acc = be.pick_accelerator("auto")
    assert (acc.kind, acc.backend, acc.device(3)) == (kind, backend, device)
    assert acc.module is (None if kind == "cpu" else getattr(torch, kind))


def test_cuda_wins_over_xpu_and_ds_accelerator_decides(devices):
    devices(cuda=True, xpu=True)
    assert be.pick_accelerator("auto").kind == "cuda"
    assert be.pick_accelerator("auto", ds_accelerator="xpu").backend == "xccl"
    # DS_ACCELERATOR=cpu on a GPU machine: DeepSpeed puts the model on the CPU, so do we.
    assert be.pick_accelerator("auto", ds_accelerator="cpu").backend == "gloo"


@pytest.mark.parametrize(
    ("seen", "requested", "says"),
    [
        ({}, "nccl", "nccl cannot run collectives on cpu tensors"),
        ({"cuda": True}, "xccl", "xccl cannot run collectives on cuda tensors"),
        ({"cuda": True}, "ccl", "use nccl or gloo"),
        ({"xpu": True}, "nccl", "use xccl or ccl"),
        ({"xpu": True}, "gloo", "gloo cannot run collectives on xpu tensors"),
    ],
)
def test_explicit_backend_that_contradicts_the_device_is_refused(devices, seen, requested, says):
    devices(**seen)
    with pytest.raises(ConfigError, match="--distributed-backend") as err:
        be.pick_accelerator(requested)
    assert says in str(err.value)


def test_explicit_backends_that_fit(devices):
    devices(cuda=True)
    assert be.pick_accelerator("gloo").backend == "gloo"  # gloo drives CUDA tensors too
    devices(xpu=True, ccl=True)
    assert be.pick_accelerator("ccl").backend == "ccl"


def test_missing_backend_library_is_named(devices):
    devices(xpu=True, xccl=False, ccl=False)
    with pytest.raises(ConfigError, match="--distributed-backend: no backend for xpu.*oneccl"):
        be.pick_accelerator("auto")
    with pytest.raises(ConfigError, match="--distributed-backend: ccl is not available.*install"):
        be.pick_accelerator("ccl")


def test_ds_accelerator_without_that_device_is_refused(devices):
    devices()
    with pytest.raises(ConfigError, match="DS_ACCELERATOR=cuda: torch finds no cuda device"):
        be.pick_accelerator("auto", ds_accelerator="cuda")
    with pytest.raises(ConfigError, match="DS_ACCELERATOR=npu: not supported"):
        be.pick_accelerator("auto", ds_accelerator="npu")


def test_device_calls_route_to_the_device_module(monkeypatch):
    calls = []

    class FakeXpu:
        @staticmethod
        def synchronize(device):
            calls.append(("sync", device.type))

        @staticmethod
        def max_memory_allocated(device):
            return 123

        @staticmethod
        def get_device_name(device):
            return "Intel(R) Data Center GPU Max 1550"

        @staticmethod
        def set_device(device):
            calls.append(("set", device.index))

    monkeypatch.setattr(torch, "xpu", FakeXpu)
    xpu = torch.device("xpu", 1)
    be.synchronize(xpu)
    be.Accelerator(kind="xpu", backend="xccl").set_device(xpu)
    assert calls == [("sync", "xpu"), ("set", 1)]
    assert be.max_memory_allocated(xpu) == 123
    assert be.device_name(xpu).startswith("Intel")
    cpu = torch.device("cpu")
    be.synchronize(cpu)  # no-op
    assert be.max_memory_allocated(cpu) is None and be.device_name(cpu) == "cpu"


def test_deepspeed_disagreement_is_refused(monkeypatch):
    import deepspeed.accelerator

    class Theirs:
        _name = "cpu"

    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: Theirs())
    be.check_deepspeed_agrees(be.Accelerator(kind="cpu", backend="gloo"))
    with pytest.raises(ConfigError, match="DS_ACCELERATOR: DeepSpeed uses the cpu accelerator.*DS_ACCELERATOR=cuda"):
        be.check_deepspeed_agrees(be.Accelerator(kind="cuda", backend="nccl"))


def test_ds_accelerator_is_read_in_env_py():
    from megatron.config.env import ds_accelerator

    assert ds_accelerator({"DS_ACCELERATOR": "xpu"}) == "xpu"
    assert ds_accelerator({"DS_ACCELERATOR": ""}) is None and ds_accelerator({}) is None
