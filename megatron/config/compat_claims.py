"""Which Megatron flags the tests run: the claims behind the compatibility table.

A test says which flags it runs with the marker ``@pytest.mark.compat("--lr-decay-iters", ...)``
(or a module-level ``pytestmark = pytest.mark.compat(...)``). ``scan_claims`` reads the markers
from the test sources without importing them and keeps a claim only when the flag also appears
in the test module outside its markers (or in a ``tests.*`` module it imports, such as the tiny
model's flags in ``tests/helpers.py``): a marker alone proves nothing. The table
(``compat_table.py``) says "implemented" or "alias" only for flags some test claims.
Torch-free; reads files only.
"""

from __future__ import annotations

import ast
import functools
import os
import re

MARKER = "compat"


def _marker_flags(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(flag, call) for every string argument of a ``pytest.mark.compat(...)`` call."""
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == MARKER
                and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "mark"):
            found += [(a.value, node) for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return found


def _uses(text: str, flag: str) -> int:
    """Occurrences of ``flag`` (dashes or underscores) as a whole flag in ``text``."""
    spelled = re.escape(flag[2:]).replace(r"\-", "[-_]")
    return len(re.findall(rf"--{spelled}(?![\w-])", text))


def _imported_test_sources(tree: ast.AST, root: str) -> str:
    """The sources of the ``tests.*`` modules ``tree`` imports from (one level)."""
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests."):
            path = os.path.join(root, *node.module.split(".")) + ".py"
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    texts.append(f.read())
    return "\n".join(texts)


@functools.lru_cache(maxsize=4)
def _scan(root: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((flag, tuple(paths)) for flag, paths in _scan_uncached(root).items())


def scan_claims(root: str) -> dict[str, list[str]]:
    """``{flag: [test file, ...]}`` for every flag a test under ``root/tests`` claims and runs
    (scanned once per process)."""
    return {flag: list(paths) for flag, paths in _scan(root)}


def _scan_uncached(root: str) -> dict[str, list[str]]:
    """``{flag: [test file, ...]}`` for every flag a test under ``root/tests`` claims and runs.

    Args:
        root: The repository root (holding ``tests/``).
    """
    claims: dict[str, list[str]] = {}
    for folder, _, files in sorted(os.walk(os.path.join(root, "tests"))):
        for name in sorted(f for f in files if f.startswith("test_") and f.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            tree = ast.parse(text)
            marked = _marker_flags(tree)
            if not marked:
                continue
            calls = {id(call): call for _, call in marked}.values()
            in_markers = "\n".join(ast.get_source_segment(text, call) or "" for call in calls)
            imported = _imported_test_sources(tree, root)
            for flag, _ in marked:
                if _uses(text, flag) > _uses(in_markers, flag) or _uses(imported, flag):
                    claims.setdefault(flag, []).append(os.path.relpath(path, root))
    return {flag: sorted(set(paths)) for flag, paths in sorted(claims.items())}
