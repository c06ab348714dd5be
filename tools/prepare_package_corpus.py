#!/usr/bin/env python3
"""Write the installed Python packages' metadata files as a jsonl corpus with real metadata.

    python tools/prepare_package_corpus.py --output-dir data/packages

writes ``train.jsonl`` and ``eval.jsonl`` (every 10th package, held out): text = the long
description; url, title, website_description, topics, classifiers = its metadata.
"""

from __future__ import annotations

import argparse
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.metadata.package_corpus import write_package_corpus  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output-dir", default="data/packages", help="where train/eval.jsonl go")
    p.add_argument("--eval-every", type=int, default=10, help="hold out every N-th package")
    p.add_argument(
        "--max-chars",
        type=int,
        default=None,
        help="cut descriptions into sections of about this many characters (each keeps the metadata)",
    )
    args = p.parse_args(argv)
    train, held_out, n_train, n_eval = write_package_corpus(
        args.output_dir, args.eval_every, args.max_chars
    )
    print(f"{train}: {n_train} documents\n{held_out}: {n_eval} documents (held-out packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
