#!/usr/bin/env python3
"""Convert a checkpoint to a universal checkpoint, loadable at any TP/PP/DP and ZeRO stage.

    python tools/convert_checkpoint.py --input SAVE                    # SAVE's latest checkpoint
    python tools/convert_checkpoint.py --input SAVE/global_step1000 --workers 8
    bash train_alcf.sh --load SAVE --universal-checkpoint [--finetune]  # then, at any layout

DeepSpeed's ``ds_to_universal.py`` spellings work too, so a script only changes the script name:
``--input_folder SAVE/global_stepN --output_folder SAVE/global_stepN_universal --keep_temp_folder
--num_extract_workers 4 --num_merge_workers 2`` (workers: the larger of the two; no temporary
folder is ever kept: the output is written under a temporary name and renamed when complete).

Writes ``SAVE/global_stepN_universal/`` (DeepSpeed's universal layout: ``zero/<param>/fp32.pt``,
``exp_avg.pt``, ...) and points ``SAVE/latest_universal`` at it. One pass over the source, read
memory-mapped: the only disk used is the output (written under a temporary name, renamed when
complete, removed if the conversion fails). A verification pass (``--no-verify`` skips it)
re-splits every tensor for every source TP rank and compares it bit for bit with the source.
EWC's theta*/F and LwF's teacher (``global_stepN/continual/``) are carried too, merged like the
weights, so a mid-stage resume with ``--ewc-weight``/``--lwf-weight`` works at the new layout.
DeepSpeed's own ``ds_to_universal`` also works on our checkpoints (ZeRO >= 1); this tool adds
ZeRO-0, progress, workers, bounded disk, the verification and the EWC/LwF state.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.checkpointing.checkpoint import CheckpointError  # noqa: E402
from megatron.checkpointing.convert import convert  # noqa: E402

PROG = "convert_checkpoint.py"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", "--input_folder", required=True,
                   help="SAVE directory (its latest) or SAVE/global_stepN")
    p.add_argument("--output", "--output_folder", default=None,
                   help="target directory (default: <step dir>_universal)")
    p.add_argument("--workers", type=int, default=None, help="parallel reader/writer processes (default 1)")
    p.add_argument("--num_extract_workers", "--num_merge_workers", type=int, action="append",
                   dest="ds_workers", default=[], help="ds_to_universal.py spellings of --workers")
    p.add_argument("--keep_temp_folder", action="store_true",
                   help="accepted for ds_to_universal.py scripts; no temporary folder is kept")
    p.add_argument("--no-verify", action="store_true", help="skip the verification pass")
    args = p.parse_args(argv)
    args.workers = max([1 if args.workers is None else args.workers, *args.ds_workers])
    return args


def _progress(started: float):  # noqa: ANN202
    def report(done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        print(f"\r{PROG}: {done}/{total} parameters, {elapsed:.1f}s", end="", file=sys.stderr, flush=True)
        if done == total:
            print(file=sys.stderr)

    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.workers < 1:
        print(f"{PROG}: error: --workers: must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.input):
        print(f"{PROG}: error: --input: {args.input} is not a directory", file=sys.stderr)
        return 2
    try:
        report = convert(args.input, args.output, workers=args.workers, verify=not args.no_verify,
                         progress=_progress(time.perf_counter()))
    except CheckpointError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    verified = f", verified in {report.verify_seconds:.1f}s" if not args.no_verify else ""
    if report.regularizers:
        print(f"{PROG}: carried the continual regularizers' state: {list(report.regularizers)} "
              "(EWC theta*/F, LwF teacher)", file=sys.stderr)
    print(f"{PROG}: wrote {report.output}: {report.parameters} parameters, states {list(report.states)}, "
          f"{report.bytes_written / 2**20:.1f} MiB in {report.seconds:.1f}s{verified}", file=sys.stderr)
    print(f"{PROG}: load it with --load {report.output} --universal-checkpoint",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
