"""Size ladders and isoFLOP studies.

A ladder is a directory of architecture presets, ``ALCF/presets/arch/<ladder>/<rung>.yaml``
(``datablations``: the 14M-2.8B shapes of the data-constrained study; ``tiny``: CPU-sized ones).
A rung's parameter count is our budget formula ``N = 4 L d^2 + 3 L d f + 6 L d + V d``
(``megatron/model/spec.py``; f = the SwiGLU rule unless the preset sets it), for the vocabulary
of the run. An isoFLOP study trains, for each compute budget C, every rung N on D = C / (6 N)
tokens (with ``--unique-tokens U``: U unique tokens repeated D / U times). Torch-free.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import yaml

from megatron.config.fields import ConfigError
from megatron.config.model import swiglu_ffn_size
from megatron.experiments.grid import RunSpec, make_run
from megatron.model.spec import approx_parameters

ARCH_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "ALCF", "presets", "arch")
GPT2_VOCAB = 50257
"""The vocabulary the datablations ladder was sized for (GPT-2's BPE)."""


@dataclass(frozen=True, slots=True)
class Rung:
    """One model size of a ladder.

    Attributes:
        name: The preset's name (file stem).
        path: The preset file.
        num_layers: L.
        hidden_size: d.
        ffn_hidden_size: f.
        params: N by the budget formula at the ladder's vocabulary.
    """

    name: str
    path: str
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    params: int


def ladders() -> list[str]:
    """The ladder names (subdirectories of ``ALCF/presets/arch``)."""
    return sorted(d for d in os.listdir(ARCH_ROOT) if os.path.isdir(os.path.join(ARCH_ROOT, d)))


def load_ladder(name: str, vocab_size: int = GPT2_VOCAB) -> list[Rung]:
    """The ladder's rungs, smallest N first.

    Raises:
        ConfigError: Unknown ladder (the message lists the known ones) or a preset without a shape.
    """
    directory = os.path.join(ARCH_ROOT, name)
    if not os.path.isdir(directory):
        raise ConfigError(f"--ladder: unknown ladder {name!r}; known: {', '.join(ladders())} "
                          "(directories of ALCF/presets/arch/)")
    rungs = []
    for file in sorted(os.listdir(directory)):
        if not file.endswith(".yaml"):
            continue
        path = os.path.join(directory, file)
        with open(path) as f:
            shape = yaml.safe_load(f) or {}
        if "num_layers" not in shape or "hidden_size" not in shape:
            raise ConfigError(f"--ladder: {path} sets no num_layers/hidden_size")
        L, d = int(shape["num_layers"]), int(shape["hidden_size"])
        ffn = int(shape.get("ffn_hidden_size") or swiglu_ffn_size(d))
        rungs.append(Rung(file[:-5], path, L, d, ffn, approx_parameters(L, d, ffn, vocab_size)))
    return sorted(rungs, key=lambda r: r.params)


def ladder_table(rungs: list[Rung], vocab_size: int) -> str:
    """The rungs and their N (what ``tools/isoflop.py --list`` prints)."""
    lines = [f"N = 4Ld^2 + 3Ldf + 6Ld + Vd at V = {vocab_size:,}", f"{'rung':>10} {'L':>3} {'d':>5} {'f':>6} {'N':>15}"]
    lines += [f"{r.name:>10} {r.num_layers:>3} {r.hidden_size:>5} {r.ffn_hidden_size:>6} {r.params:>15,}" for r in rungs]
    return "\n".join(lines)


def isoflop_runs(
    budgets: list[float],
    rungs: list[Rung],
    *,
    tokens_per_step: int,
    unique_tokens: int | None = None,
    min_steps: int = 10,
) -> list[RunSpec]:
    """For each budget C, the rungs with at least ``min_steps`` steps of D = floor(C / 6N) tokens.

    Args:
        budgets: Compute budgets C in FLOPs.
        rungs: The ladder (smallest first).
        tokens_per_step: Global batch x sequence length of the base run.
        unique_tokens: U for data-constrained runs (``--unique-tokens U --epochs D/U``).
        min_steps: The fewest optimizer steps a run may have.

    Raises:
        ConfigError: A budget too small for even the smallest rung (named, with the smallest
            budget that would do), or a non-positive budget.
    """
    runs = []
    for budget in budgets:
        if not (budget > 0 and math.isfinite(budget)):
            raise ConfigError(f"--flops: {budget!r} is not a positive number")
        smallest = rungs[0]
        need = 6 * smallest.params * tokens_per_step * min_steps
        if budget < need:
            raise ConfigError(
                f"--flops: {budget:g} FLOPs is too small for the smallest rung {smallest.name} "
                f"(N = {smallest.params:,}): {min_steps} steps of {tokens_per_step:,} tokens need "
                f"C >= {need:.3g}; raise the budget or use a smaller ladder")
        for rung in rungs:
            tokens = math.floor(budget / (6 * rung.params))
            if tokens < tokens_per_step * min_steps:
                continue
            overrides = {"train_tokens": tokens} if unique_tokens is None else {
                "unique_tokens": unique_tokens, "epochs": float(f"{tokens / unique_tokens:.10g}")}
            run = make_run(overrides, configs=(rung.path,), name=f"C{budget:g}__{rung.name}")
            run.labels.update(flops_budget=budget, arch=rung.name, params_formula=rung.params)
            runs.append(run)
    return runs
