#!/usr/bin/env python3
"""Print (or, with --write, update docs/megatron_compat.md's) Megatron compatibility table, generated from
``megatron/config/compat.py`` and the config schema.

    python tools/compat_table.py            # print the table
    python tools/compat_table.py --write    # replace the table between its markers in docs/megatron_compat.md
"""

from __future__ import annotations

import argparse
import os
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config.compat_table import TABLE_BEGIN, TABLE_END, compat_table  # noqa: E402

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "megatron_compat.md")


def replace_table(text: str, table: str) -> str:
    """``text`` with the block between the table markers replaced by ``table``."""
    start, end = text.index(TABLE_BEGIN), text.index(TABLE_END) + len(TABLE_END)
    return text[:start] + table + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="compat_table.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--write", action="store_true", help="update docs/megatron_compat.md in place")
    args = parser.parse_args(argv)
    table = compat_table()
    if not args.write:
        print(table)
        return 0
    with open(README) as f:
        text = f.read()
    with open(README, "w") as f:
        f.write(replace_table(text, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
