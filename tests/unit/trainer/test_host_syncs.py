"""No host reads of device values in steps that do not log: loss and grad norm stay tensors
until the log line, and what is logged equals the per-step floats read one by one."""

from __future__ import annotations

import traceback
from types import SimpleNamespace

import pytest
import torch
from torch.overrides import TorchFunctionMode

from megatron.config import DistEnv
from megatron.optimizer.torch_optimizers import multi_tensor_kernel
from megatron.trainer.loop import Trainer, train
from megatron.trainer.step_values import StepValues
from tests.helpers import tiny_plan

READS = {"item", "__float__", "tolist", "__bool__", "__int__", "__index__"}


class HostReads(TorchFunctionMode):
    """Records each tensor-to-Python read, except torch.optim's reads of its step counters (CPU
    tensors by design on every device with foreach=True; fused=True keeps them on the GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if getattr(func, "__name__", "") in READS:
            frames = traceback.extract_stack(limit=8)[:-1]
            if not any("torch/optim/" in f.filename for f in frames):
                self.sites.append(f"{func.__name__} at {frames[-1].filename}:{frames[-1].lineno}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("guard", [False, True])
def test_only_log_steps_read_device_values(monkeypatch, guard):
    reads: dict[int, list[str]] = {}
    step = Trainer.train_step

    def counted(self, state):  # noqa: ANN001, ANN202
        iteration = state.iteration + 1
        with HostReads() as mode:
            step(self, state)
        reads[iteration] = mode.sites

    monkeypatch.setattr(Trainer, "train_step", counted)
    flags = [] if guard else ["--max-nonfinite-steps", "0"]
    result = train(tiny_plan("--train-iters", "6", "--log-interval", "3", *flags), DistEnv())
    quiet = {i: [site.split(" at ")[1].split(":")[0].rsplit("/", 1)[-1] for site in reads[i]] for i in (1, 2, 4, 5)}
    # The non-finite guard's decision is the one read a quiet step makes (nonfinite.py).
    assert quiet == {i: ["nonfinite.py"] if guard else [] for i in (1, 2, 4, 5)}
    assert reads[3] and reads[6]  # the log lines read loss, grad norm, token counts
    assert len(result.losses) == 6 and all(isinstance(x, float) for x in result.losses)
    # The log line's mean is the mean of the per-step floats (float64 sum, as before).
    assert result.train_loss == sum(result.losses[3:]) / 3


def test_step_values_equal_float_of_each_tensor():
    values = StepValues()
    tensors = [torch.tensor(x, dtype=torch.float32) for x in (1 / 3, 2.7182817, 1e-8)]
    for t in tensors:
        values.append(t)
    values.append(0.25)  # a value that was already a float (e.g. a pipeline engine's)
    assert len(values) == 4
    assert list(values) == [float(t) for t in tensors] + [0.25]
    values.append(torch.tensor(5.0, dtype=torch.bfloat16))
    assert values[-1] == 5.0 and len(values) == 5


def test_adamw_fuses_on_cuda_only():
    cuda = SimpleNamespace(device=torch.device("cuda", 0))
    cpu = SimpleNamespace(device=torch.device("cpu"))
    assert multi_tensor_kernel([{"params": [cuda, cuda]}]) == {"fused": True}
    assert multi_tensor_kernel([{"params": [cuda]}, {"params": [cpu]}]) == {"foreach": True}
    assert multi_tensor_kernel([{"params": []}]) == {"foreach": True}


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])
def test_clipping_on_device_equals_the_host_formula(monkeypatch, max_norm):
    from megatron.trainer import grad_norm

    # One process without groups: TP rank 0, a model-parallel group of one.
    monkeypatch.setattr(grad_norm.parallel_state, "get_tensor_model_parallel_rank", lambda: 0)
    monkeypatch.setattr(grad_norm.parallel_state, "get_model_parallel_group", lambda: None)
    monkeypatch.setattr(grad_norm.dist, "get_world_size", lambda group=None: 1)
    params = [torch.nn.Parameter(torch.randn(5)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn(5)
    expected = [p.grad.clone() for p in params]
    norm = torch.stack([torch.linalg.vector_norm(g) for g in expected]).square().sum().sqrt()
    coef = max_norm / (float(norm) + 1e-6)  # the host formula this replaced
    if coef < 1.0:
        torch._foreach_mul_(expected, coef)
    got = grad_norm.clip_grads_(params, max_norm)
    assert isinstance(got, torch.Tensor) and float(got) == float(norm)
    for p, e in zip(params, expected, strict=True):
        assert torch.equal(p.grad, e)  # bit for bit, clipped or not
