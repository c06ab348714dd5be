"""The README's metadata demo runs end to end (shortened): corpus, both preprocessings, the three
trainings (metadata, plain, metadata with a plain cooldown through the stage runner), the paired
evaluations."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_metadata_demo_script(repo_root, tmp_path):
    out = subprocess.run(
        ["bash", "ALCF/metadata_demo.sh"],
        cwd=repo_root, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHON_EXEC": sys.executable, "OUT": str(tmp_path), "TRAIN_ITERS": "10",
             "OMP_NUM_THREADS": "2"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "trainable of" in out.stdout  # the metadata run masks its prefixes
    assert "stage cooldown (2/2): --reset-data-state from" in out.stderr  # 9 + 1 iterations (runner log)
    for run in ("meta", "plain", "cooldown/cooldown"):
        rows = json.loads((tmp_path / run / "eval.json").read_text())
        assert [r["type"] for r in rows] == ["url", "title", "website_description", "all", "fixed prefix"]
        assert all(r["documents"] > 50 and r["ppl_meta"] > 1 for r in rows)
