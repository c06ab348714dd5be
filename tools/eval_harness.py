#!/usr/bin/env python3
"""Evaluate a checkpoint with EleutherAI's lm-evaluation-harness (``lm-eval``).

    python tools/eval_harness.py --load SAVE                         # SAVE's latest, bundled task
    python tools/eval_harness.py --load SAVE/global_step1000 --tasks shakespeare_next_line,hellaswag
    python tools/eval_harness.py --hf hf-model --tasks my_tasks/task.yaml --limit 100

``--load`` exports the checkpoint (any layout, or a universal one) to a temporary Hugging Face
directory with ``tools/export_hf.py``'s code and runs the harness on it; ``--hf`` evaluates an
existing export. ``--tasks`` takes lm-eval task names, lm-eval YAML files, JSONL files of
``{"context", "choices", "label"}`` items, and the bundled offline ``shakespeare_next_line``
(choose the true next line of a held-out play among four). When every task is local the run is
forced offline (``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``).

Writes lm-eval's results JSON next to the checkpoint (``<checkpoint>/eval_harness.json``, or
``--output``) and prints one summary line. Needs ``pip install lm-eval``; errors exit with
status 2 and one line naming the argument.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.checkpointing.checkpoint import CheckpointError  # noqa: E402
from megatron.config.fields import ConfigError  # noqa: E402
from megatron.evaluation.harness import (  # noqa: E402
    TASK_NAME,
    plan_tasks,
    require_lm_eval,
    run_harness,
    summary_line,
)

PROG = "eval_harness.py"
RESULTS_FILE = "eval_harness.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--load", help="checkpoint: SAVE (its latest), SAVE/global_stepN or a universal one")
    source.add_argument("--hf", help="a Hugging Face model directory (e.g. from tools/export_hf.py)")
    p.add_argument("--tasks", default=TASK_NAME, help=f"comma-separated tasks or task files (default {TASK_NAME})")
    p.add_argument("--output", help=f"results JSON (default: <checkpoint>/{RESULTS_FILE})")
    p.add_argument("--batch-size", type=int, default=8, help="harness batch size (default 8)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N items of each task")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return p.parse_args(argv)


def _checkpoint_dir(load: str) -> str:
    from megatron.checkpointing.hf_export import open_checkpoint

    ckpt = open_checkpoint(load)
    return getattr(ckpt, "directory", load)


def evaluate(args: argparse.Namespace) -> tuple[str, dict]:
    """Export if needed, run the harness, write the JSON; return (results path, results)."""
    from megatron.checkpointing.hf_export import export_hf

    plan = plan_tasks([t for t in args.tasks.split(",") if t])
    require_lm_eval()  # before any heavy work
    if plan.offline:
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"
    start = time.perf_counter()
    tmp = None
    try:
        if args.load:
            where = _checkpoint_dir(args.load)
            tmp = tempfile.mkdtemp(prefix="eval_harness_")
            hf_dir = os.path.join(tmp, "hf")
            export_hf(args.load, hf_dir)
        else:
            if not os.path.isfile(os.path.join(args.hf, "config.json")):
                raise CheckpointError(f"--hf: {args.hf} has no config.json; it is not a transformers model")
            where = hf_dir = args.hf
        results = run_harness(hf_dir, plan, batch_size=args.batch_size, limit=args.limit,
                              num_fewshot=args.num_fewshot, device=args.device)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    results = {"source": os.path.abspath(args.load or args.hf), "seconds": time.perf_counter() - start, **results}
    path = args.output or os.path.join(where, RESULTS_FILE)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    return path, results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path, results = evaluate(args)
    except (CheckpointError, ConfigError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"{PROG}: {summary_line(results)} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
