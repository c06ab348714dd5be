#!/usr/bin/env python3
"""Coordinate check of a scaling recipe: mean |activation| against width (or depth).

Trains a model at each width (or depth) for a few AdamW steps on one fixed batch of the bundled
Shakespeare text, for each recipe, records the l1 of the embedding, every attention and MLP
output, the last block and the logits, writes ``coord_check.csv`` and ``coord_check.png`` (log-log,
one panel per recipe and activation, one line per step) and prints the fitted slope of log l1
against log width (depth) per (activation, step). Under muP the slopes stay near 0; under the
standard parametrization they grow (see docs/mup_usage.md).

    python tools/coord_check.py --widths 32,64,128,256 --recipes none,mup --out outputs/coord
    python tools/coord_check.py --widths 64 --depths 2,4,8,16 --recipes completep,no_residual
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

# Recipe name -> flags (base shapes are added from --base-width / --base-depth).
RECIPES = {
    "none": [],
    "mup": ["--scaling-recipe", "mup"],
    "completep": ["--scaling-recipe", "completep"],
    # CompleteP without its residual multiplier: muP with the output projections' 1/sqrt(2L) dropped.
    "no_residual": ["--scaling-recipe", "mup", "--scaling-block-out-proj-init-depth-power", "0"],
}


def recipe_flags(name: str, base_width: int, base_depth: int) -> list[str]:
    """Flags of a named recipe with its base shapes."""
    flags = list(RECIPES[name])
    if name != "none":
        flags += ["--mup-base-hidden-size", str(base_width)]
    if name == "completep":
        flags += ["--mup-base-num-layers", str(base_depth)]
    return flags


def shakespeare_batch(batch: int, seq: int, offset: int = 100_000):
    """A fixed ``[batch, seq + 1]`` batch of bytes of the first bundled play."""
    import torch

    from tools.prepare_default_corpus import play_files

    with open(play_files()[0], "rb") as f:
        data = f.read()
    chunk = data[offset : offset + batch * (seq + 1)]
    return torch.tensor(list(chunk), dtype=torch.long).view(batch, seq + 1)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=_ints, default=[32, 64, 128, 256])
    p.add_argument("--depths", type=_ints, default=[2])
    p.add_argument("--recipes", default="none,mup", help=f"comma list of {sorted(RECIPES)}")
    p.add_argument("--base-width", type=int, help="muP base width (default: the smallest)")
    p.add_argument("--base-depth", type=int, help="CompleteP base depth (default: the smallest)")
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--out", default="outputs/coord_check")
    args = p.parse_args(argv)
    args.recipes = args.recipes.split(",")
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        p.error(f"--recipes: unknown {unknown}; known: {sorted(RECIPES)}")
    if len(args.widths) > 1 and len(args.depths) > 1:
        p.error("--widths/--depths: vary one of them (the other takes one value)")
    bad = [w for w in args.widths if w % args.head_dim]
    if bad:
        p.error(f"--widths: {bad} are not multiples of --head-dim {args.head_dim}")
    args.axis = "depth" if len(args.depths) > 1 else "width"
    return args


def write_plot(rows_by_recipe: dict, axis: str, path: str) -> None:
    """Log-log panels: one row per recipe, one column per activation kind, a line per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megatron.scaling.coord_check import hook_family

    hooks = sorted({hook_family(r.hook) for rows in rows_by_recipe.values() for r in rows})
    fig, axes = plt.subplots(len(rows_by_recipe), len(hooks), squeeze=False,
                             figsize=(3 * len(hooks), 2.6 * len(rows_by_recipe)))
    for i, (recipe, rows) in enumerate(rows_by_recipe.items()):
        steps = sorted({r.step for r in rows})
        for j, hook in enumerate(hooks):
            ax = axes[i][j]
            for step in steps:
                sel = [r for r in rows if r.step == step and hook_family(r.hook) == hook]
                sizes = sorted({getattr(r, axis) for r in sel})
                means = [
                    sum(r.l1 for r in sel if getattr(r, axis) == s)
                    / len([r for r in sel if getattr(r, axis) == s])
                    for s in sizes
                ]
                ax.loglog(sizes, means, marker="o", label=f"t={step}")
            ax.set_title(f"{recipe}: {hook}", fontsize=8)
            ax.set_xlabel(axis, fontsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron.scaling.coord_check import fit_slopes, run_coord_check

    tokens = shakespeare_batch(args.batch, args.seq)
    base_w, base_d = args.base_width or min(args.widths), args.base_depth or min(args.depths)
    os.makedirs(args.out, exist_ok=True)
    rows_by_recipe = {}
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/rdzv", rank=0, world_size=1)
        parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)
        try:
            for recipe in args.recipes:
                rows_by_recipe[recipe] = run_coord_check(
                    args.widths, args.depths, recipe_flags(recipe, base_w, base_d), tokens,
                    steps=args.steps, seeds=args.seeds, lr=args.lr, head_dim=args.head_dim,
                )
        finally:
            parallel_state.destroy_model_parallel()
            dist.destroy_process_group()
    with open(os.path.join(args.out, "coord_check.csv"), "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["recipe", "width", "depth", "seed", "step", "hook", "l1"])
        for recipe, rows in rows_by_recipe.items():
            out.writerows([recipe, r.width, r.depth, r.seed, r.step, r.hook, f"{r.l1:.6g}"]
                          for r in rows)
    write_plot(rows_by_recipe, args.axis, os.path.join(args.out, "coord_check.png"))
    print(f"slope of log l1 vs log {args.axis} (mean over {args.seeds} seeds), per step:")
    for recipe, rows in rows_by_recipe.items():
        slopes = fit_slopes(rows, args.axis)
        for hook in sorted({h for h, _ in slopes}):
            values = " ".join(f"{slopes[(hook, s)]:+.2f}" for s in range(1, args.steps + 1))
            print(f"  {recipe:<12} {hook:<11} {values}")
    print(f"wrote {args.out}/coord_check.csv and coord_check.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
