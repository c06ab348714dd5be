#!/usr/bin/env python3
"""Import a Hugging Face (or Megatron-DeepSpeed) checkpoint as a universal checkpoint of ours.

    python tools/import_checkpoint.py --input ./Llama-3.2-1B --output ./llama-1b
    LOAD=./llama-1b bash train_alcf.sh --universal-checkpoint --finetune   # any TP/PP/DP/ZeRO

The model shape and tokenizer come with the import (``run_metadata.json``): no shape or
tokenizer flags are typed afterwards. One tensor per worker is in memory at a time; the output
is written under a temporary name and renamed when complete (nothing is left on error). See
docs/import.md for the supported classes and options.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.checkpointing.importing.formats import SOURCE_FORMATS, open_source  # noqa: E402
from megatron.checkpointing.importing.writer import DTYPES, import_checkpoint  # noqa: E402
from megatron.checkpointing.metadata import CheckpointError  # noqa: E402
from megatron.config.fields import ConfigError  # noqa: E402

PROG = "import_checkpoint.py"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="the checkpoint to import (an HF model directory, ...)")
    p.add_argument("--output", required=True, help="the universal checkpoint to write (must not exist)")
    p.add_argument("--format", choices=sorted(SOURCE_FORMATS), default=None,
                   help="the input's format (default: detected)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="dtype of the stored weights (default float32, what training loads)")
    p.add_argument("--workers", type=int, default=1, help="tensors read and written in parallel (default 1)")
    p.add_argument("--tokenizer-model", default=None,
                   help="megatron-deepspeed: a local copy of the tokenizer the checkpoint's args name "
                   "(a file, or a directory holding tokenizer.model / tokenizer.json); it is bundled")
    p.add_argument("--no-optimizer-state", action="store_true",
                   help="megatron-deepspeed: import the weights only, not Adam's moments")
    return p.parse_args(argv)


class ProgressBar:
    """A one-line progress bar on stderr (redrawn on a terminal, every 10% otherwise)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = -1

    def __call__(self, done: int, total: int, name: str) -> None:
        percent = 100 * done // max(total, 1)
        if percent == self.last or (not self.tty and percent // 10 == self.last // 10 and percent < 100):
            return
        self.last = percent
        end = "\n" if percent == 100 or not self.tty else ""
        start = "\r" if self.tty else ""
        sys.stderr.write(f"{start}{PROG}: [{'#' * (percent // 5):<20}] {percent:3d}% "
                         f"{done / 2**20:.1f}/{total / 2**20:.1f} MiB{end}")
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if os.path.exists(args.output):
            raise CheckpointError(f"--output: {args.output} exists; remove it or choose another directory")
        if args.workers < 1:
            raise ConfigError(f"--workers: must be at least 1, got {args.workers}")
        options = {"tokenizer_model": args.tokenizer_model,
                   "optimizer_state": False if args.no_optimizer_state else None}
        source = open_source(args.input, args.format, **options)
        report = import_checkpoint(source, args.output, dtype=args.dtype, workers=args.workers,
                                   progress=ProgressBar())
    except (CheckpointError, ConfigError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"{PROG}: wrote {report.output}: {report.format} -> universal checkpoint, {report.parameters:,} "
          f"parameters in {report.tensors} tensors, {report.bytes_written / 2**20:.1f} MiB, "
          f"{report.seconds:.1f} s. Continue with: LOAD={report.output} bash train_alcf.sh "
          "--universal-checkpoint --finetune", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
