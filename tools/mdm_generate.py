#!/usr/bin/env python3
"""Former name of ``tools/generate.py`` (it samples from checkpoints of either objective); kept so
existing scripts keep working."""

from __future__ import annotations

import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from tools.generate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
