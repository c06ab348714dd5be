"""Optimizer modules: registering every optimizer (what --help and --dry-run do) imports no torch;
the torch classes are plain top-level classes, reachable by their module path."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

CODE = """
import sys
import megatron.optimizer
from megatron.optimizer import OPTIMIZERS
assert {"muon", "dshampoo", "sophia"} <= set(OPTIMIZERS), sorted(OPTIMIZERS)
assert "torch" not in sys.modules, [m for m in sys.modules if m.startswith("megatron.optimizer")]
"""


def test_registering_every_optimizer_imports_no_torch(repo_root):
    subprocess.run([sys.executable, "-c", CODE], cwd=repo_root, check=True)


@pytest.mark.parametrize(
    ("module", "name", "registration"),
    [
        ("megatron.optimizer.muon_torch", "Muon", "megatron.optimizer.muon"),
        ("megatron.optimizer.shampoo_torch", "DShampoo", "megatron.optimizer.shampoo"),
        ("megatron.optimizer.sophia_torch", "SophiaG", "megatron.optimizer.sophia"),
    ],
)
def test_optimizer_classes_live_at_module_top_level(module, name, registration):
    cls = getattr(importlib.import_module(module), name)
    assert (cls.__module__, cls.__qualname__) == (module, name)
    # The torch-free registration module does not re-export it (no lazy ``__getattr__`` shim).
    assert not hasattr(importlib.import_module(registration), name)
