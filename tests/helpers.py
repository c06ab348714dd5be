"""Test helpers: tiny run configs and a 2-process gloo runner."""

from __future__ import annotations

import gc
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from megatron.config import DistEnv, parse_args
from megatron.plan import RunPlan, resolve

TINY = [
    "--num-layers", "2",
    "--hidden-size", "16",
    "--num-attention-heads", "4",
    "--seq-length", "16",
    "--micro-batch-size", "2",
    "--log-interval", "1",
    "--eval-interval", "1000",
    "--eval-iters", "1",
    "--lr", "3e-3",
]


def tiny_args(*flags: str, mock: bool = True) -> list[str]:
    """The tiny-GPT flags (hidden 16, 2 layers) with ``flags`` replacing any they repeat."""
    base = [*TINY, "--mock-data", "--vocab-size", "64"] if mock else list(TINY)
    given = {f for f in flags if f.startswith("--")}
    kept: list[str] = []
    i = 0
    while i < len(base):
        has_value = i + 1 < len(base) and not base[i + 1].startswith("--")
        if base[i] not in given:
            kept += base[i : i + 1 + has_value]
        i += 1 + has_value
    return [*kept, *flags]


def tiny_plan(*flags: str, env: DistEnv | None = None, mock: bool = True) -> RunPlan:
    """A resolved plan for the tiny GPT plus ``flags``."""
    return resolve(parse_args(tiny_args(*flags, mock=mock)).config, env or DistEnv())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world_size: int, port: int, queue: Any, args: tuple) -> None:
    env = DistEnv(
        rank=rank,
        local_rank=rank,
        world_size=world_size,
        local_world_size=world_size,
        master_addr="127.0.0.1",
        master_port=port,
        launcher="test",
    )
    # One intra-op thread per rank: a forked child must not enter the parent's OpenMP pool (libgomp
    # hangs there), and two ranks share the two cores of a CI box anyway.
    torch.set_num_threads(1)
    try:
        queue.put((rank, "ok", fn(env, *args)))
    except BaseException:  # noqa: BLE001  (reported to the parent)
        queue.put((rank, "error", traceback.format_exc()))
        raise


def run_distributed(
    fn: Callable, *args: Any, world_size: int = 2, timeout_s: float = 180.0
) -> list[Any]:
    """Run ``fn(env, *args)`` on ``world_size`` forked processes; return results by rank.

    ``fn`` must be a top-level function. Forking reuses the parent's imports (torch, DeepSpeed,
    megatron-core), so a 2-rank test costs about a second rather than ten.
    """
    # Collect the garbage of earlier in-process runs first: a forked child that later frees an
    # inherited gloo process group hangs in its destructor.
    gc.collect()
    ctx = mp.get_context("fork")
    queue = ctx.SimpleQueue()
    port = free_port()
    context = mp.start_processes(
        _entry,
        args=(fn, world_size, port, queue, args),
        nprocs=world_size,
        join=False,
        start_method="fork",
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=0.5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"{fn.__name__} on {world_size} ranks hung for {timeout_s:.0f}s")
    results: dict[int, Any] = {}
    while not queue.empty():
        rank, status, value = queue.get()
        if status == "error":
            raise AssertionError(f"rank {rank} failed:\n{value}")
        results[rank] = value
    return [results[r] for r in range(world_size)]


def assert_resume_is_bit_exact(run: Callable, flags: list[str], save: str, *, stop: int = 2) -> None:
    """On 2 ranks, the run ``flags`` describe (``--train-iters`` included) equals ``stop`` steps, a
    checkpoint in ``save`` and the rest resumed from it: the losses and the final validation loss
    bit for bit. ``run(env, flags)`` (a top-level function) returns ``(losses, valid_loss)``."""
    full = run_distributed(run, flags)[0]
    first = run_distributed(run, [*flags, "--exit-interval", str(stop), "--save", save])[0]
    second = run_distributed(run, [*flags, "--load", save])[0]
    assert first[0] + second[0] == full[0]
    assert second[1] == full[1]


def tp_full_weights(module: torch.nn.Module, plan: RunPlan) -> dict[str, Any]:
    """Every parameter merged over the TP group, by canonical name (numpy copies)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron.checkpointing.layout import canonical_name, merge, tp_layout

    group = parallel_state.get_tensor_model_parallel_group()
    size = dist.get_world_size(group)
    out = {}
    for name, p in module.named_parameters():
        full = canonical_name(name, plan.model.num_layers)
        parts = [torch.empty_like(p.data) for _ in range(size)]
        dist.all_gather(parts, p.data.contiguous(), group=group)
        out[full] = merge(parts, tp_layout(full, plan.model)).numpy().copy()
    return out


def local_weights(module: torch.nn.Module, plan: RunPlan) -> dict[str, Any]:
    """This rank's parameters as they are (numpy copies)."""
    return {n: p.detach().numpy().copy() for n, p in module.named_parameters()}


def train_recording(
    plan: RunPlan, env: DistEnv, weights: Callable[[torch.nn.Module, RunPlan], dict[str, Any]]
) -> tuple[list[float], list[float], dict[str, Any]]:
    """Train ``plan`` in this process (group): (losses + final validation loss, per-step grad
    norms, ``weights(module, plan)`` after the run)."""
    from megatron.distributed import destroy_distributed, init_distributed
    from megatron.trainer.loop import Trainer

    ctx = init_distributed(plan, env)
    try:
        trainer = Trainer(plan, ctx)
        norms: list[float] = []
        step = trainer.engine.train_step

        def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            result = step(*args, **kwargs)
            norms.append(float(result.grad_norm))
            return result

        trainer.engine.train_step = recording
        try:
            result = trainer.run()
        finally:
            del trainer.engine.train_step  # no engine -> closure -> engine cycle outlives the run
        out = weights(trainer.engine.module, plan)
    finally:
        destroy_distributed()
    return [*result.losses, result.valid_loss], norms, out


class _FixedLosses:
    """Stand-in for the DeepSpeed engine's forward: fixed per-token losses."""

    module = None

    def __init__(self, losses: torch.Tensor):
        self.losses = losses

    def __call__(self, tokens, labels):  # noqa: ANN001, ANN204, ARG002
        return self.losses


def engine_train_loss(
    objective: Any, losses: torch.Tensor, batch: Any, callbacks: list, *, ctx: Any = None, meter: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TrainEngine._train_loss`` (the objective's reduction plus the callbacks' extra terms) of
    an engine whose forward returns ``losses``: (loss to differentiate, loss to report)."""
    from types import SimpleNamespace

    from megatron.trainer.callbacks import Callbacks
    from megatron.trainer.engine import TrainEngine

    engine = TrainEngine.__new__(TrainEngine)
    engine.engine, engine.objective = _FixedLosses(losses), objective
    engine.ctx = ctx if ctx is not None else SimpleNamespace(tp_size=1)
    engine.callbacks = Callbacks(callbacks)
    return engine._train_loss(batch, meter)
