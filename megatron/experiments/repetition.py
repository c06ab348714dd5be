"""The AR vs masked-diffusion repetition study as a sweep preset (``tools/mdm_vs_ar.py``).

Runs: each objective x epoch count x seed, on a subset of U unique tokens repeated E times. Either
U is fixed (``unique_tokens``: heavy repetition, the compute grows with E) or the total is
(``total_tokens``: U = total / E, every run the same compute). At each E the AR and MDM runs train
the same tokens, so the same FLOPs (6N + 12 L d s per token for both). Torch-free.
"""

from __future__ import annotations

from typing import Any

from megatron.config.fields import ConfigError
from megatron.experiments.grid import RunSpec, make_run

OBJECTIVES = ("ar", "mdm")


def repetition_runs(epochs: list[float], seeds: list[int], *, unique_tokens: int | None = None,
                    total_tokens: int | None = None, num_mc: int = 8) -> list[RunSpec]:
    """The study's runs (give exactly one of ``unique_tokens`` and ``total_tokens``).

    Raises:
        ConfigError: Neither or both sizes, or an epoch count below 1.
    """
    if (unique_tokens is None) == (total_tokens is None):
        raise ConfigError("--unique-tokens: give --unique-tokens U (fixed subset) or --total-tokens T (fixed compute)")
    if not epochs or min(epochs) < 1:
        raise ConfigError(f"--epochs: {epochs} must be counts >= 1")
    runs = []
    for seed in seeds:
        for e in epochs:
            unique = unique_tokens if unique_tokens is not None else int(total_tokens // e)
            for objective in OBJECTIVES:
                overrides: dict[str, Any] = {"objective": objective, "unique_tokens": unique, "epochs": float(e),
                                             "seed": seed}
                if objective == "mdm":
                    overrides["num_mc"] = num_mc
                run = make_run(overrides, name=f"{objective}_e{e:g}_u{unique}_s{seed}")
                runs.append(run)
    return runs


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"{mean:.3f}" + (f" ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else "")


def table(rows: list[dict[str, Any]]) -> str:
    """One line per epoch count: AR's validation NLL beside MDM's bound (mean over seeds ± half
    their range), from the sweep's rows (``results.collect``)."""
    lines = ["| epochs | unique tokens | train tokens | AR valid loss (NLL, nats/token) | "
             "MDM valid bound (negative ELBO >= NLL, nats/token) |", "|---|---|---|---|---|"]
    for e in sorted({r["epochs"] for r in rows}):
        at = [r for r in rows if r["epochs"] == e and isinstance(r.get("final_valid_loss"), float)]
        if not at:
            continue
        ar = [r["final_valid_loss"] for r in at if r["objective"] == "ar"]
        mdm = [r["final_valid_loss"] for r in at if r["objective"] == "mdm"]
        lines.append(f"| {e:g} | {at[0]['unique_tokens']:,} | {at[0]['tokens']:,} | {_cell(ar)} | {_cell(mdm)} |")
    return "\n".join(lines)
