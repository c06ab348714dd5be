"""The repository stands alone: no file points at documents a clone does not have (the team's
shared specification folder); design notes live in docs/ and the references point there."""

from __future__ import annotations

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Built from pieces so that this file does not match itself.
SPEC, STYLE = "SP" + "EC", "ST" + "YLE"
OUTSIDE = re.compile(rf"shared/(specs|seeds|{SPEC}|{STYLE}|PLATFORM)|{SPEC} section|{SPEC} §|{STYLE}\.md|{SPEC}\.md")
DOC_LINK = re.compile(r"docs/([\w-]+\.md)")


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.split() if f.endswith((".py", ".md", ".sh", ".yaml", ".txt", ".toml"))]


def test_nothing_points_outside_the_repository():
    hits = []
    for name in _tracked():
        with open(os.path.join(ROOT, name), encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if OUTSIDE.search(line):
                    hits.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def test_every_docs_reference_names_an_existing_page():
    missing = []
    for name in _tracked():
        with open(os.path.join(ROOT, name), encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                missing += [f"{name}:{number}: docs/{page}" for page in DOC_LINK.findall(line)
                            if not os.path.isfile(os.path.join(ROOT, "docs", page))]
    assert not missing, "\n".join(missing)
