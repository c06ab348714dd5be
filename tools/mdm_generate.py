#!/usr/bin/env python3
"""Former name of ``tools/generate.py`` (it samples from checkpoints of either objective); kept so
existing scripts keep working."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.generate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
