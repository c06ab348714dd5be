#!/usr/bin/env python3
"""Write pydoc's HTML pages of standard-library modules as a metadata-records corpus.

    python tools/prepare_pydoc_html_corpus.py --output-dir data/pydoc_html

writes ``train.jsonl`` (pages cut into ~1,000-character pieces) and ``eval.jsonl`` (every 10th
module held out, ~150-character pieces so that a piece with its tags fits a 512-token window):
text + one ``html`` record per tag (character offsets, nesting order, attributes) + the page's
url and title (docs/metadata_local.md).
"""

from __future__ import annotations

import argparse
import logging
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.metadata.pydoc_corpus import write_pydoc_corpus  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output-dir", default="data/pydoc_html", help="where train/eval.jsonl go")
    p.add_argument("--eval-every", type=int, default=10, help="hold out every N-th module")
    p.add_argument("--train-chars", type=int, default=1000, help="training piece size")
    p.add_argument("--eval-chars", type=int, default=150, help="evaluation piece size")
    args = p.parse_args(argv)
    n_train, n_eval = write_pydoc_corpus(
        args.output_dir, args.eval_every, args.train_chars, args.eval_chars
    )
    print(f"{args.output_dir}/train.jsonl: {n_train} documents")
    print(f"{args.output_dir}/eval.jsonl: {n_eval} documents (held-out modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
