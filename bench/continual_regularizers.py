#!/usr/bin/env python3
"""Cost of EWC and LwF per training step, against plain fine-tuning measured in the same run.

    DS_ACCELERATOR=cpu .venv/bin/python bench/continual_regularizers.py [--hidden 128 --layers 4 --steps 20]

Trains stage 0 (a few steps, saved), then the same stage 1 (``--finetune`` from it) three ways:
plain, ``--ewc-weight`` (Fisher over ``--fisher-batches`` batches, timed separately as the stage's
one-off anchoring cost) and ``--lwf-weight --lwf-kl`` (one extra teacher forward per micro-batch).
Prints the mean step time of each (first step excluded) and the ratio to plain, plus the extra
memory: EWC's theta* and F (2 x fp32 parameters) and LwF's teacher (one model copy).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config import DistEnv, parse_args  # noqa: E402
from megatron.distributed import destroy_distributed, init_distributed  # noqa: E402
from megatron.plan import resolve  # noqa: E402
from megatron.trainer.loop import Trainer, train  # noqa: E402


def _flags(args: argparse.Namespace, *extra: str) -> list[str]:
    return ["--num-layers", str(args.layers), "--hidden-size", str(args.hidden), "--num-attention-heads", "4",
            "--seq-length", "128", "--micro-batch-size", "8", "--mock-data", "--vocab-size", "256",
            "--log-interval", "1000", "--eval-iters", "0", "--lr", "1e-3", *extra]


def _stage1(args: argparse.Namespace, s0: str, *extra: str) -> tuple[float, float, int]:
    """(mean step seconds after the first, anchoring seconds, extra bytes)."""
    plan = resolve(parse_args(_flags(args, "--train-iters", str(args.steps), "--load", s0, "--finetune",
                                     *extra)).config, DistEnv())
    ctx = init_distributed(plan, DistEnv())
    try:
        trainer = Trainer(plan, ctx)
        started = time.perf_counter()
        state = trainer.checkpoints.restore(trainer, trainer.callbacks)
        anchoring = time.perf_counter() - started
        times = []
        while state.iteration < plan.train_iters:
            t = time.perf_counter()
            trainer.train_step(state)
            times.append(time.perf_counter() - t)
        reg = trainer.regularizers
        extra_bytes = 0
        if reg is not None and reg.ewc is not None:
            extra_bytes += sum(a.numel() * 4 * 2 for a in reg.ewc.anchor)
        if reg is not None and reg.teacher is not None:
            extra_bytes += reg.teacher.bytes
        trainer.reporter.close()
        trainer.stop.close()
        return sum(times[1:]) / len(times[1:]), anchoring, extra_bytes
    finally:
        destroy_distributed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--fisher-batches", type=int, default=20)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    s0 = os.path.join(tempfile.mkdtemp(), "s0")
    train(resolve(parse_args(_flags(args, "--train-iters", "2", "--save", s0)).config, DistEnv()), DistEnv())
    runs = {
        "plain": (),
        "ewc": ("--ewc-weight", "1e5", "--ewc-num-iterations", str(args.fisher_batches)),
        "lwf": ("--lwf-weight", "1", "--lwf-kl"),
    }
    results = {name: _stage1(args, s0, *flags) for name, flags in runs.items()}
    base = results["plain"][0]
    print(f"{'run':6} {'step ms':>9} {'x plain':>8} {'anchor s':>9} {'extra MiB':>10}")
    for name, (step, anchoring, extra) in results.items():
        print(f"{name:6} {step * 1e3:9.1f} {step / base:8.2f} {anchoring:9.2f} {extra / 2**20:10.2f}")


if __name__ == "__main__":
    main()
