"""Coordinate checks: the mean |activation| of every block's pieces, over widths or depths.

A parametrization transfers when the size of each activation coordinate stays put as the model
grows (microsoft/mup's coord check; arXiv 2203.03466 section 7). Forward hooks record
``l1 = mean |x|`` of the embedding output, every attention and MLP output (before the residual
multiplier), the last block's output and the logits. ``run_coord_check`` trains models of each
width (or depth) for a few AdamW steps on one fixed batch; ``fit_slopes`` fits log l1 against
log width (or depth) per (hook, step): about 0 under muP/CompleteP, growing under the standard
parametrization. ``CoordCheckLogger`` logs the same numbers for the first iterations of a
training run (``--mup-coord-check``): activations, not weights.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from megatron.config import DistEnv, parse_args
from megatron.model.layers import Embedding, OutputLayer, TransformerLayer
from megatron.plan.resolve import resolve
from megatron.scaling.groups import build_param_groups

log = logging.getLogger(__name__)

COORD_CHECK_ITERS = 20
"""Iterations ``--mup-coord-check`` logs."""


def _hook_points(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for every recorded activation in ``model`` (dense model or a stage)."""
    points = []
    for module in model.modules():
        if isinstance(module, Embedding):
            points.append(("embedding", module))
        elif isinstance(module, TransformerLayer):
            i = module.layer_number
            points.append((f"layers.{i}.attention", module.self_attention))
            points.append((f"layers.{i}.mlp", module.mlp))
            if i == module.spec.num_layers - 1:
                points.append(("last_block", module))
        elif isinstance(module, OutputLayer):
            points.append(("logits", module))
    for module in model.modules():
        if isinstance(module, Embedding) and module.spec.tie_embeddings:
            points.append(("logits", module.tied_head))  # tied logits go through this matmul
    return points


class ActivationRecorder:
    """Forward hooks accumulating mean |x| per point until ``collect``.

    Under tensor parallelism the logits are vocab shards of equal size; their mean |x| is
    averaged over the TP group so every rank reports the full-vocabulary value.
    """

    def __init__(self, model: nn.Module, tp_group: Any = None):
        self.tp_group = tp_group
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in _hook_points(model)]

    def _hook(self, name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            value = out.detach().abs().float().mean()
            if name == "logits" and self.tp_group is not None:
                import torch.distributed as dist

                if dist.get_world_size(self.tp_group) > 1:
                    dist.all_reduce(value, group=self.tp_group)
                    value /= dist.get_world_size(self.tp_group)
            self.sums[name] += float(value)
            self.counts[name] += 1

        return record

    def collect(self) -> dict[str, float]:
        """Mean l1 per point since the last ``collect`` (over micro-batches), then reset."""
        out = {name: self.sums[name] / self.counts[name] for name in self.sums if self.counts[name]}
        self.sums.clear()
        self.counts.clear()
        return out

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles = []


class CoordCheckLogger:
    """``--mup-coord-check``: log the activation l1s of the first ``COORD_CHECK_ITERS`` steps.

    Under pipeline parallelism each stage records its own layers; the log shows the logging
    rank's stage (the first: embedding and its layers).
    """

    def __init__(self, model: nn.Module):
        from megatron.core import parallel_state

        tp_group = parallel_state.get_tensor_model_parallel_group()
        self.recorder = ActivationRecorder(model, tp_group)
        self.rows: list[dict[str, float]] = []

    def on_step(self, iteration: int) -> None:
        """After optimizer step ``iteration`` (1-based): log its forward passes' l1s."""
        if self.recorder.handles:
            values = self.recorder.collect()
            self.rows.append({"iteration": iteration, **values})
            log.info(
                "coord check iter %d: %s",
                iteration,
                " | ".join(f"{k} {v:.4g}" for k, v in sorted(values.items())),
            )
            if iteration >= COORD_CHECK_ITERS:
                self.recorder.remove()


@dataclass(frozen=True, slots=True)
class CoordRow:
    """One measurement: the model's size, seed, step (1-based) and a hook's mean |x|."""

    width: int
    depth: int
    seed: int
    step: int
    hook: str
    l1: float


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    var = sum((x - mx) ** 2 for x in lx)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly, strict=True)) / var


def hook_family(hook: str) -> str:
    """``layers.3.attention`` -> ``attention`` (per-layer hooks of one kind pooled)."""
    return hook.split(".")[-1] if hook.startswith("layers.") else hook


def fit_slopes(rows: Sequence[CoordRow], axis: str = "width") -> dict[tuple[str, int], float]:
    """Slope of log mean-over-seeds l1 against log ``axis`` (``width`` or ``depth``) per
    (hook, step). Per-layer hooks are pooled by kind (attention, mlp); a per-layer hook that
    does not exist at every size (deeper models) is pooled the same way."""
    means: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    for r in rows:
        means[(hook_family(r.hook), r.step, getattr(r, axis))].append(r.l1)
    by_key: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    for (hook, step, size), values in means.items():
        by_key[(hook, step)][size] = sum(values) / len(values)
    return {
        key: fit_slope(list(sizes), list(sizes.values()))
        for key, sizes in sorted(by_key.items())
        if len(sizes) > 1
    }


def model_flags(width: int, depth: int, *, head_dim: int, seq: int, batch: int, vocab: int,
                lr: float, seed: int) -> list[str]:
    """The command-line flags of one coord-check model (recipe flags are added by the caller)."""
    return [
        "--num-layers", str(depth), "--hidden-size", str(width),
        "--num-attention-heads", str(width // head_dim), "--seq-length", str(seq),
        "--micro-batch-size", str(batch), "--train-iters", "1", "--lr", str(lr),
        "--lr-decay-style", "constant", "--mock-data", "--vocab-size", str(vocab),
        "--make-vocab-size-divisible-by", "1", "--seed", str(seed),
    ]  # fmt: skip


def train_and_record(plan: Any, tokens: torch.Tensor, steps: int) -> list[dict[str, float]]:
    """Build ``plan``'s GPT, take ``steps`` AdamW steps at constant LR on the fixed batch
    ``tokens`` ``[b, s + 1]`` and return each step's forward l1s (step 1 = at initialization).

    Needs megatron-core's parallel state (a one-process gloo group is enough).
    """
    from megatron.model.gpt import GPTModel, masked_mean

    torch.manual_seed(plan.config.train.seed)
    model = GPTModel(plan.model).train()
    spec = plan.optimizer
    groups = build_param_groups(model.named_parameters(), plan, spec.param_policy)
    optimizer = spec.build(groups, plan.config.optim, None)
    for group in optimizer.param_groups:  # constant LR: the scheduler's multiplier is 1
        group["lr"] = plan.config.optim.lr * group.get("lr_scale", 1.0)
    recorder = ActivationRecorder(model)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    history = []
    for _ in range(steps):
        loss = masked_mean(model(inputs, labels), torch.ones_like(labels, dtype=torch.float32))
        history.append(recorder.collect())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    recorder.remove()
    return history


def run_coord_check(
    widths: Sequence[int],
    depths: Sequence[int],
    recipe_flags: Sequence[str],
    tokens: torch.Tensor,
    *,
    steps: int = 5,
    seeds: int = 3,
    lr: float = 1e-2,
    head_dim: int = 16,
    vocab: int = 256,
) -> list[CoordRow]:
    """Coordinate check over every (width, depth) with the same recipe flags.

    Args:
        widths: Hidden sizes (multiples of ``head_dim``).
        depths: Numbers of layers.
        recipe_flags: E.g. ``["--scaling-recipe", "mup", "--mup-base-hidden-size", "32"]``.
        tokens: The fixed batch ``[b, s + 1]`` of token ids < ``vocab``.
        steps: AdamW steps per model.
        seeds: Seeds per size (0..seeds-1).
        lr: Base LR.
        head_dim: Head dimension (fixed, so the number of heads grows with width).
        vocab: Vocabulary size.

    Returns:
        One row per (width, depth, seed, step, hook).
    """
    rows = []
    batch, seq = tokens.shape[0], tokens.shape[1] - 1
    for width in widths:
        for depth in depths:
            for seed in range(seeds):
                flags = model_flags(width, depth, head_dim=head_dim, seq=seq, batch=batch,
                                    vocab=vocab, lr=lr, seed=seed)
                plan = resolve(parse_args([*flags, *recipe_flags]).config, DistEnv())
                for step, values in enumerate(train_and_record(plan, tokens, steps), start=1):
                    rows += [CoordRow(width, depth, seed, step, h, v) for h, v in values.items()]
    return rows
