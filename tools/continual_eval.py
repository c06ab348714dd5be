#!/usr/bin/env python3
"""The forgetting matrix of a continual plan: every finished stage's final checkpoint on every
stage's held-out data (and any extra lists), idempotent and resumable.

    python tools/continual_eval.py --plan ALCF/presets/cpt-demo.yaml \
        [--extra-eval NAME=LIST ...] [--normalizer CKPT] [--max-sequences 256] \
        [--tensorboard-dir auto]

``--output-dir`` means what it means to ``tools/continual_run.py``: the parent of the run root
(``<output_dir>/<name>``), overriding the plan's ``output_dir``; ``--eval-dir`` moves the
evaluation folder itself. Writes ``<output_dir>/<name>/eval/cells.jsonl`` (one line per cell, skipped when present),
``matrix.json`` (losses, bootstrap 95% intervals, ID/backward/forward means, normalized when a
normalizer is given), ``matrix.png`` and ``matrix_lines.png``. With ``--tensorboard-dir`` every
complete row not written yet goes to TensorBoard at step = its stage index (``stage_eval.py``);
the stage runner does this after each stage with ``eval_after_each_stage: true``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config import ConfigError  # noqa: E402
from megatron.continual.eval_plan import finished_stages, read_eval_plan  # noqa: E402
from megatron.continual.evaluate import EvalSet, evaluate_plan  # noqa: E402


def _extra(text: str) -> EvalSet:
    name, sep, path = text.partition("=")
    if not sep:
        name, path = os.path.splitext(os.path.basename(text))[0], text
    if not os.path.isfile(path):
        raise ConfigError(f"--extra-eval: {path} does not exist")
    return EvalSet(name, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan", required=True, help="the stage plan (YAML)")
    parser.add_argument("--extra-eval", nargs="*", default=[], metavar="[NAME=]LIST",
                        help="more data file lists to evaluate every checkpoint on")
    parser.add_argument("--normalizer", default=None, help="reference checkpoint (e.g. an oracle)")
    parser.add_argument("--output-dir", default=None,
                        help="parent of the run root, as for continual_run.py (default: the plan's output_dir)")
    parser.add_argument("--eval-dir", default=None, help="where cells and the matrix go "
                        "(default: <output_dir>/<name>/eval)")
    parser.add_argument("--max-sequences", type=int, default=None, help="per dataset of a list")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--tensorboard-dir", default=None,
                        help="write each new matrix row to TensorBoard here (auto: <eval dir>/tensorboard)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        plan = read_eval_plan(args.plan, output_dir=args.output_dir)
        if not finished_stages(plan) and args.normalizer is None:
            raise ConfigError(f"--plan: no stage of {args.plan} has finished under {plan.root} (no "
                              "STAGE_DONE.json); if tools/continual_run.py ran with --output-dir, "
                              "give the same --output-dir here")
        extra = [_extra(e) for e in args.extra_eval]
        if args.normalizer is not None and not os.path.isdir(args.normalizer):
            raise ConfigError(f"--normalizer: {args.normalizer} is not a checkpoint directory")
        matrix, measured = evaluate_plan(
            plan, extra=extra, normalizer=args.normalizer, output_dir=args.eval_dir,
            plots=not args.no_plots, max_sequences=args.max_sequences,
            micro_batch_size=args.micro_batch_size,
        )
        rows = []
        if args.tensorboard_dir is not None:
            from megatron.continual.stage_eval import TB_DIR, write_rows

            out = args.eval_dir or os.path.join(plan.root, "eval")
            tb = os.path.join(out, TB_DIR) if args.tensorboard_dir == "auto" else args.tensorboard_dir
            rows = write_rows(matrix, plan.keys, tb)
    except ConfigError as e:
        print(f"continual_eval.py: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"measured_cells": measured, "tensorboard_rows": rows, "checkpoints": matrix["checkpoints"],
                      "metrics": matrix["metrics"],
                      "normalized_metrics": matrix.get("normalized_metrics")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
