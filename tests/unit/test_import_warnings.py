"""Known-harmless import warnings are silenced in one place (``megatron/__init__.py``), so every
tool and bench is quiet, not only the trainer."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_megatron_core_import_prints_no_transformer_engine_warning():
    # A fresh interpreter, as a tool starts: our package first, then megatron-core's optimizer
    # and TP modules (each warns about Transformer Engine/Apex without the filter).
    code = "import megatron.core.tensor_parallel, megatron.core.optimizer"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    assert "Transformer Engine and Apex are not installed" not in out.stderr, out.stderr
