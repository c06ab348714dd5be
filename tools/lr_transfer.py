#!/usr/bin/env python3
"""LR-transfer experiment: where the best LR lands at each width, standard parametrization vs muP.

For each preset (``ALCF/presets/lr-transfer/{sp,mup}.yaml``), width and LR, trains the preset's
small GPT on the bundled Shakespeare plays in this process and records the final validation
loss; writes ``lr_transfer.csv`` and prints a Markdown table (validation loss per LR, best LR
per width). Under muP (base width 64) the best LR should stay put as the width grows; under the
standard parametrization it tends to move down.

    python tools/lr_transfer.py --widths 64,128,256 --lrs 1e-3,3e-3,1e-2,3e-2 --out outputs/lr_transfer
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PRESETS = {name: os.path.join("ALCF", "presets", "lr-transfer", f"{name}.yaml") for name in ("sp", "mup")}


def _list(kind: type):
    return lambda text: [kind(x) for x in text.split(",") if x]


def run_one(preset: str, width: int, lr: float, seed: int, head_dim: int, extra: list[str]) -> float:
    """Final validation loss of one run (in this process)."""
    from megatron.config import DistEnv, parse_args, resolve
    from megatron.trainer.loop import train

    flags = ["--config", preset, "--hidden-size", str(width), "--seed", str(seed),
             "--num-attention-heads", str(width // head_dim), "--lr", str(lr), *extra]  # fmt: skip
    result = train(resolve(parse_args(flags).config, DistEnv()), DistEnv())
    return float("nan") if result.valid_loss is None else result.valid_loss


def markdown(runs: list[tuple[str, int, float, int, float]], lrs: list[float]) -> list[str]:
    """One line per (preset, width): validation loss at each LR (mean over seeds), the best in bold,
    then the best LR."""
    cells: dict[tuple[str, int, float], list[float]] = {}
    for preset, width, lr, _seed, loss in runs:
        cells.setdefault((preset, width, lr), []).append(loss)
    rows = [(*key, sum(v) / len(v)) for key, v in cells.items()]
    lines = ["| param. | width | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best LR |",
             "|---|---|" + "---|" * (len(lrs) + 1)]  # fmt: skip
    for preset in dict.fromkeys(r[0] for r in rows):
        for width in dict.fromkeys(r[1] for r in rows if r[0] == preset):
            losses = {r[2]: r[3] for r in rows if r[0] == preset and r[1] == width}
            best = min(losses, key=lambda k: losses[k] if losses[k] == losses[k] else float("inf"))
            cells = [f"**{losses[lr]:.3f}**" if lr == best else f"{losses[lr]:.3f}" for lr in lrs]
            lines.append(f"| {preset} | {width} | " + " | ".join(cells) + f" | {best:g} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=_list(int), default=[64, 128, 256])
    p.add_argument("--lrs", type=_list(float), default=[1e-3, 3e-3, 1e-2, 3e-2])
    p.add_argument("--presets", type=_list(str), default=["sp", "mup"])
    p.add_argument("--seeds", type=_list(int), default=[1234], help="the table shows the mean over seeds")
    p.add_argument("--head-dim", type=int, default=32, help="the presets' kv_channels")
    p.add_argument("--out", default="outputs/lr_transfer")
    args, extra = p.parse_known_args(argv)  # extra: more pretrain_gpt.py flags (e.g. --train-iters)
    from tools.prepare_default_corpus import main as prepare

    if prepare() != 0:
        return 1
    os.makedirs(args.out, exist_ok=True)
    rows = []
    started = time.perf_counter()
    for name in args.presets:
        for width in args.widths:
            for lr in args.lrs:
                for seed in args.seeds:
                    loss = run_one(PRESETS[name], width, lr, seed, args.head_dim, extra)
                    rows.append((name, width, lr, seed, loss))
                    logging.getLogger(__name__).warning(
                        "lr_transfer: %s width %d lr %g seed %d -> valid loss %.4f (%.0f s so far)",
                        name, width, lr, seed, loss, time.perf_counter() - started,
                    )
    with open(os.path.join(args.out, "lr_transfer.csv"), "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["preset", "width", "lr", "seed", "valid_loss"])
        out.writerows(rows)
    print("\n".join(markdown(rows, args.lrs)))
    print(f"{len(rows)} runs in {time.perf_counter() - started:.0f} s; wrote {args.out}/lr_transfer.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
