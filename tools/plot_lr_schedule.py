#!/usr/bin/env python3
"""Draw the LR curve a command line will produce, from the same schedule functions; no training.

    python tools/plot_lr_schedule.py --output lr.png -- --train-iters 10000 --lr 3e-4 \
        --lr-decay-style constant --lr-constant-plus-cooldown --lr-warmup-iters 500 --mock-data

Everything after ``--`` is pretrain_gpt.py's flags (``--config`` files included). Writes the PNG
(LR against step) and, with ``--csv``, the values.
"""

from __future__ import annotations

import argparse
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config import ConfigError, DistEnv, parse_args  # noqa: E402
from megatron.plan import resolve  # noqa: E402
from megatron.schedules.registry import build_schedule_fn  # noqa: E402


def lr_curve(argv: list[str]) -> tuple[list[float], str]:
    """LR of every step of the run ``argv`` describes, and the schedule's fingerprint."""
    plan = resolve(parse_args(argv).config, DistEnv())
    fn, fingerprint = build_schedule_fn(plan)
    return [plan.config.optim.lr * fn(s) for s in range(plan.train_iters + 1)], fingerprint


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, run = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="lr_schedule.png", help="PNG to write")
    parser.add_argument("--csv", default=None, help="also write step,lr rows here")
    args = parser.parse_args(ours)
    try:
        lrs, fingerprint = lr_curve(run)
    except ConfigError as e:
        print(f"plot_lr_schedule.py: error: {e}", file=sys.stderr)
        return 2
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("step,lr\n")
            f.writelines(f"{s},{lr!r}\n" for s, lr in enumerate(lrs))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(range(len(lrs)), lrs)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(fingerprint.split("(")[0], fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"{args.output}: {len(lrs) - 1} steps, peak {max(lrs):.3e}, last {lrs[-1]:.3e}  [{fingerprint}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
