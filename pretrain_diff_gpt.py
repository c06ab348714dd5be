#!/usr/bin/env python3
"""Masked-diffusion pretraining: ``pretrain_gpt.py --objective mdm`` under the entry-point name
of the diffusion-data-constraint scripts (``pretrain_diff_gpt.py``), so their command lines run.

    python pretrain_diff_gpt.py --data-file-list LIST --train-iters 100 --num-mc 8 ...
"""

from __future__ import annotations

import sys

import pretrain_gpt


def main(argv: list[str] | None = None) -> int:
    """``pretrain_gpt.main`` with ``--objective mdm`` first (an explicit ``--objective ar`` is
    refused as a conflicting repeat)."""
    return pretrain_gpt.main(["--objective", "mdm", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
