"""Run as ``python tools/X.py``: stop with one line unless the interpreter imports this checkout.

The project is installed into its environment (``pip install --no-deps -e .``; ``ALCF/env.sh``
does it when it builds or completes ``.venv``), so every script imports ``megatron``, ``tools``
and ``utils`` without editing ``sys.path``. A script run as a file imports this sibling module
first (``if not __package__: import _checkout``; ``bench/`` and ``utils/`` hold links to this
file). With an interpreter that does not import the checkout the script holds, or imports another
checkout, the script stops here with the command that fixes it, instead of failing on
``No module named 'megatron.config'`` (megatron-core's ``megatron`` namespace is found instead)
or silently running the other checkout's code. See docs/install.md.
"""

from __future__ import annotations

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imported_root() -> str | None:
    """The checkout whose ``megatron`` package this interpreter imports, or None."""
    spec = importlib.util.find_spec("megatron")
    if spec is None or spec.origin is None:  # absent, or only megatron-core's namespace package
        return None
    return os.path.dirname(os.path.dirname(os.path.abspath(spec.origin)))


def problem(root: str = ROOT) -> str | None:
    """One line saying why ``root`` is not what this interpreter imports, or None when it is."""
    found = imported_root()
    if found is not None and os.path.samefile(found, root):
        return None
    seen = "cannot import" if found is None else f"imports megatron from {found}, not from"
    return (f"error: {sys.executable} {seen} this checkout ({root}): run `{sys.executable} -m pip "
            f"install --no-deps -e {root}` (ALCF/env.sh does it for .venv) or set PYTHONPATH={root}")


_message = problem()
if _message is not None:
    sys.exit(_message)
