#!/usr/bin/env python3
"""Train a tokenizer on jsonl(.gz) or plain-text files.

    python tools/train_tokenizer.py --type bpe --vocab-size 32000 \
        --input corpus.jsonl.gz --json-keys text --output tokenizers/corpus-32k.json

writes a byte-level BPE ``tokenizer.json`` (``<|endoftext|>`` ends documents); use it with
``--tokenizer-type hf --tokenizer-model tokenizers/corpus-32k.json``.

    python tools/train_tokenizer.py --type sentencepiece --vocab-size 32000 \
        --input corpus.jsonl.gz --output tokenizers/corpus-32k

writes ``tokenizers/corpus-32k.model`` (and ``.vocab``); use it with
``--tokenizer-type sentencepiece --tokenizer-model tokenizers/corpus-32k.model``.
"""

from __future__ import annotations

import argparse
import logging
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config.fields import ConfigError  # noqa: E402
from megatron.data.train_tokenizer import TRAINERS, TrainOptions, train_tokenizer  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--type", choices=sorted(TRAINERS), default="bpe", help="tokenizer kind")
    p.add_argument("--vocab-size", type=int, required=True, help="target vocabulary size")
    p.add_argument("--input", nargs="+", required=True, help="jsonl, jsonl.gz or .txt files")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="text fields of jsonl records")
    p.add_argument(
        "--output",
        required=True,
        help="bpe: a .json file or a directory (for tokenizer.json); "
        "sentencepiece: a prefix for PREFIX.model and PREFIX.vocab",
    )
    p.add_argument("--min-frequency", type=int, default=2, help="bpe: fewest occurrences to merge")
    p.add_argument(
        "--sentencepiece-model-type",
        choices=["unigram", "bpe"],
        default="unigram",
        help="sentencepiece: training algorithm",
    )
    p.add_argument(
        "--max-sentences",
        type=int,
        default=0,
        help="sentencepiece: sample this many lines (0: all)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train and report where the model went and how to load it."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    options = TrainOptions(
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        sentencepiece_model_type=args.sentencepiece_model_type,
        max_sentences=args.max_sentences,
        show_progress=sys.stderr.isatty(),
    )
    try:
        result = train_tokenizer(
            args.input, args.output, kind=args.type, options=options, json_keys=args.json_keys
        )
    except (ConfigError, ValueError) as e:
        print(f"train_tokenizer.py: error: {e}", file=sys.stderr)
        return 2
    print(
        f"{result.path}: {result.vocab_size} ids from {result.documents} documents "
        f"in {result.seconds:.1f} s"
    )
    print(f"use with: --tokenizer-type {result.tokenizer_type} --tokenizer-model {result.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
