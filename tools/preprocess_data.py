#!/usr/bin/env python3
"""Tokenize jsonl(.gz) or plain-text files into megatron-core indexed datasets.

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \
        --json-keys text --tokenizer-type byte --append-eod --workers 8

writes ``data/corpus_text_document.bin/.idx`` (one dataset per JSON key). Outputs appear only
when complete.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.config.data import DataConfig  # noqa: E402
from megatron.config.fields import ConfigError  # noqa: E402
from megatron.data.preprocess import tokenize_to_indexed  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="jsonl, jsonl.gz or .txt files")
    p.add_argument("--output-prefix", required=True, help="output path prefix")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="text fields of jsonl records")
    p.add_argument("--tokenizer-type", default="byte", help="tokenizer registry name")
    p.add_argument("--tokenizer-model", default=None, help="tokenizer model file")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    p.add_argument("--append-eod", action="store_true", help="end each document with EOD")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        tokenizer_cfg = DataConfig(tokenizer_type=args.tokenizer_type, tokenizer_model=args.tokenizer_model)
        stats = tokenize_to_indexed(
            args.input,
            args.output_prefix,
            tokenizer_cfg,
            json_keys=args.json_keys,
            workers=args.workers,
            append_eod=args.append_eod,
        )
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"preprocess_data.py: error: {e}", file=sys.stderr)
        return 2
    for key, prefix in stats.prefixes.items():
        print(f"{key}: {prefix}.bin / .idx")
    print(
        f"{stats.documents} documents, {stats.tokens} tokens in {stats.seconds:.1f} s "
        f"({stats.documents / stats.seconds:.0f} docs/s, {stats.tokens / stats.seconds:.0f} tokens/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
