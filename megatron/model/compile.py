"""``--compile``: regional compilation, one ``torch.compile`` per transformer layer.

Compiling the layers one by one (``nn.Module.compile``, which compiles the module's call in
place) instead of the whole model keeps compile time small (all layers share one graph: dynamo
inlines nn.Modules and treats their parameters as inputs, so a 24-layer model compiles one
layer's forward and backward), and it leaves everything outside the layers eager: DeepSpeed's
engine and its gradient hooks, the pipeline engine's schedule, the embedding, the head and the
loss. Parameter names, and therefore checkpoints, do not change.

Inside a layer, megatron-core's tensor-parallel linears call ``torch.distributed`` collectives
through autograd functions. At TP=1 dynamo traces them whole; at TP > 1 the async all-reduce
in their backward is not traceable, so the graph breaks around each TP linear (8 graphs per step
instead of 2) and the results still equal eager's (tested at TP=2). Activation checkpointing
(``--recompute-activations``) sits inside the compiled layer, where dynamo handles
``torch.utils.checkpoint`` as one region.

The first step that compiles is timed and logged on its own and left out of the throughput
window (``CompileWatch``), so tokens/s reports the compiled steady state.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from megatron.distributed.backend import synchronize
from megatron.model.layers import TransformerLayer

log = logging.getLogger(__name__)


def compile_layers(model: nn.Module, *, mode: str = "default", backend: str = "inductor") -> int:
    """Compile every ``TransformerLayer`` of ``model`` (dense GPT or pipeline stage) in place.

    Args:
        model: The model before ``deepspeed.initialize``.
        mode: ``torch.compile`` mode (``default``, ``max-autotune``, ...; inductor only).
        backend: ``inductor`` (generated Triton/C++ kernels), ``aot_eager`` or ``eager`` (tracing
            only: to debug graph breaks or numerics).

    Returns:
        How many layers were compiled.
    """
    options: dict[str, Any] = {"backend": backend}
    if backend == "inductor" and mode != "default":
        options["mode"] = mode
    # megatron-core's TP linears warn (a deprecation, on rank 0) in every forward; dynamo would
    # break the layer's graph at each warning, so it replays them after the graph instead.
    torch._dynamo.config.ignore_logging_functions.add(warnings.warn)
    # Under --recompute-activations the layer body runs inside torch.utils.checkpoint, and its
    # one side effect, filling the RoPE table cache (rope.py), would break the graph there.
    # Filling it again during recomputation is not needed (the entry is already there).
    torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    layers = [m for m in model.modules() if isinstance(m, TransformerLayer)]
    for layer in layers:
        layer.compile(**options)
    log.info("--compile: %d transformer layers under torch.compile(%s)", len(layers),
             ", ".join(f"{k}={v!r}" for k, v in options.items()))
    return len(layers)


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (grows when a step compiles)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompileWatch:
    """Times the steps during which something compiled and keeps them out of throughput.

    Args:
        enabled: ``--compile`` is on (otherwise ``step`` does nothing).
        device: Synchronized after a compiling step, so its time includes its kernels.
    """

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.device = device
        self.total_seconds = 0.0
        self.steps: list[int] = []
        """Iterations (1-based) whose step compiled."""

    @contextmanager
    def step(self, reporter: Any, iteration: int) -> Iterator[None]:
        """Wrap one training step (``iteration`` = steps done before it); if it compiled, log
        its wall time and take it out of ``reporter``'s throughput window."""
        if not self.enabled:
            yield
            return
        before = compiled_graphs()
        started = time.perf_counter()
        yield
        graphs = compiled_graphs() - before
        if graphs == 0:
            return
        synchronize(self.device)
        seconds = time.perf_counter() - started
        self.total_seconds += seconds
        self.steps.append(iteration + 1)
        reporter.exclude_step(seconds)
        log.info("--compile: step %d compiled %d graph(s) in %.1f s (left out of tokens/s; "
                 "%.1f s of compiling steps so far)", iteration + 1, graphs, seconds,
                 self.total_seconds)
