#!/usr/bin/env python3
"""LR-transfer experiment: where the best LR lands at each width, standard parametrization vs muP.

For each preset (``ALCF/presets/lr-transfer/{sp,mup}.yaml``), width and LR, trains the preset's
small GPT on the bundled Shakespeare plays in this process and records the final validation
loss; writes ``lr_transfer.csv``, ``lr_transfer.png`` and prints a Markdown table (validation
loss per LR averaged over seeds, best grid LR and the parabola-fitted optimum per width). Under
muP (base width 64) the best LR should stay put as the width grows; under the standard
parametrization it tends to move down.

    OMP_NUM_THREADS=1 python tools/lr_transfer.py --presets sp --seeds 1,2 --out outputs/lrt_sp &
    OMP_NUM_THREADS=1 python tools/lr_transfer.py --presets mup --seeds 1,2 --out outputs/lrt_mup &
    wait; python tools/lr_transfer.py --from-csv outputs/lrt_{sp,mup}/lr_transfer.csv --out outputs/lrt
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
import time

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

PRESETS = {
    name: os.path.join("ALCF", "presets", "lr-transfer", f"{name}.yaml") for name in ("sp", "mup")
}


def _list(kind: type):
    return lambda text: [kind(x) for x in text.split(",") if x]


def run_one(
    preset: str, width: int, lr: float, seed: int, head_dim: int, extra: list[str]
) -> float:
    """Final validation loss of one run (in this process); NaN when the run stopped early."""
    from megatron.config import DistEnv, parse_args
    from megatron.plan import resolve
    from megatron.trainer.loop import train

    flags = ["--config", preset, "--hidden-size", str(width), "--seed", str(seed),
             "--num-attention-heads", str(width // head_dim), "--lr", str(lr), *extra]  # fmt: skip
    result = train(resolve(parse_args(flags).config, DistEnv()), DistEnv())
    if result.stop_reason is not None or result.valid_loss is None:
        logging.getLogger(__name__).warning(
            "lr_transfer: run stopped early (%s): no final validation loss", result.stop_reason
        )
        return float("nan")
    return result.valid_loss


Run = tuple[str, int, float, int, float]  # preset, width, lr, seed, valid loss


def mean_losses(runs: list[Run]) -> dict[tuple[str, int], dict[float, float]]:
    """(preset, width) -> {lr: validation loss averaged over seeds}, in first-seen order."""
    cells: dict[tuple[str, int, float], list[float]] = {}
    for preset, width, lr, _seed, loss in runs:
        cells.setdefault((preset, width, lr), []).append(loss)
    table: dict[tuple[str, int], dict[float, float]] = {}
    for (preset, width, lr), losses in cells.items():
        table.setdefault((preset, width), {})[lr] = sum(losses) / len(losses)
    return table


def fitted_best_lr(losses: dict[float, float]) -> float | None:
    """The vertex of the parabola in log10(LR) through the best grid LR and its two neighbours:
    a finer estimate of the optimum than the grid point. None when the best LR is at the grid's
    edge (the optimum may lie outside) or the three points do not curve upwards."""
    lrs = sorted(lr for lr, loss in losses.items() if loss == loss)
    if len(lrs) < 3:
        return None
    i = min(range(len(lrs)), key=lambda k: losses[lrs[k]])
    if i == 0 or i == len(lrs) - 1:
        return None
    (x0, x1, x2) = (math.log10(lrs[i - 1]), math.log10(lrs[i]), math.log10(lrs[i + 1]))
    (y0, y1, y2) = (losses[lrs[i - 1]], losses[lrs[i]], losses[lrs[i + 1]])
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denom
    if a <= 0:
        return None
    return 10 ** (-b / (2 * a))


def markdown(runs: list[Run], lrs: list[float]) -> list[str]:
    """One line per (preset, width): validation loss at each LR (mean over seeds), the best in
    bold, the best grid LR and the parabola-fitted optimum."""
    lines = ["| param. | width | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best LR | fitted |",
             "|---|---|" + "---|" * (len(lrs) + 2)]  # fmt: skip
    for (preset, width), losses in mean_losses(runs).items():
        best = min(losses, key=lambda k: losses[k] if losses[k] == losses[k] else float("inf"))
        cells = [
            (
                "-"
                if lr not in losses
                else f"**{losses[lr]:.3f}**"
                if lr == best
                else f"{losses[lr]:.3f}"
            )
            for lr in lrs
        ]
        fit = fitted_best_lr(losses)
        lines.append(
            f"| {preset} | {width} | "
            + " | ".join(cells)
            + f" | {best:g} | {'edge' if fit is None else f'{fit:.2g}'} |"
        )
    return lines


def plot(runs: list[Run], path: str) -> None:
    """Validation loss vs LR (log x), one panel per preset, one line per width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = mean_losses(runs)
    presets = list(dict.fromkeys(key[0] for key in table))
    fig, axes = plt.subplots(
        1, len(presets), figsize=(5 * len(presets), 4), sharey=True, squeeze=False
    )
    for ax, preset in zip(axes[0], presets, strict=True):
        for (name, width), losses in table.items():
            if name == preset:
                lrs = sorted(losses)
                ax.plot(lrs, [losses[lr] for lr in lrs], marker="o", label=f"width {width}")
        ax.set_xscale("log")
        ax.set_title(preset)
        ax.set_xlabel("learning rate")
        ax.legend()
    axes[0][0].set_ylabel("validation loss (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_csv(paths: list[str]) -> list[Run]:
    """Runs from earlier ``lr_transfer.csv`` files (e.g. one per preset or seed, run in parallel)."""
    runs: list[Run] = []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                seed = int(row.get("seed") or 0)
                runs.append(
                    (
                        row["preset"],
                        int(row["width"]),
                        float(row["lr"]),
                        seed,
                        float(row["valid_loss"]),
                    )
                )
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=_list(int), default=[64, 128, 256])
    p.add_argument("--lrs", type=_list(float), default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    p.add_argument("--presets", type=_list(str), default=["sp", "mup"])
    p.add_argument(
        "--seeds", type=_list(int), default=[1234], help="the table shows the mean over seeds"
    )
    p.add_argument("--head-dim", type=int, default=32, help="the presets' kv_channels")
    p.add_argument("--out", default="outputs/lr_transfer")
    p.add_argument(
        "--from-csv", nargs="+", metavar="CSV", help="no training: table and plot from these CSVs"
    )
    args, extra = p.parse_known_args(argv)  # extra: more pretrain_gpt.py flags (e.g. --train-iters)
    if args.from_csv:
        runs = read_csv(args.from_csv)
        lrs = sorted({r[2] for r in runs})
        os.makedirs(args.out, exist_ok=True)
        plot(runs, os.path.join(args.out, "lr_transfer.png"))
        print("\n".join(markdown(runs, lrs)))
        print(f"{len(runs)} runs; wrote {args.out}/lr_transfer.png")
        return 0
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
                        name,
                        width,
                        lr,
                        seed,
                        loss,
                        time.perf_counter() - started,
                    )
    with open(os.path.join(args.out, "lr_transfer.csv"), "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["preset", "width", "lr", "seed", "valid_loss"])
        out.writerows(rows)
    plot(rows, os.path.join(args.out, "lr_transfer.png"))
    print("\n".join(markdown(rows, args.lrs)))
    print(
        f"{len(rows)} runs in {time.perf_counter() - started:.0f} s; wrote {args.out}/lr_transfer.csv"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
