"""The README's metadata demo runs end to end (shortened): corpus, both preprocessings, both
trainings, both paired evaluations."""

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
        env={**os.environ, "PYTHON_EXEC": sys.executable, "OUT": str(tmp_path), "TRAIN_ITERS": "3",
             "OMP_NUM_THREADS": "2"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "trainable of" in out.stdout  # the metadata run masks its prefixes
    for run in ("meta", "plain"):
        rows = json.loads((tmp_path / run / "eval.json").read_text())
        assert [r["type"] for r in rows] == ["url", "title", "website_description", "all", "fixed prefix"]
        assert all(r["documents"] > 50 and r["ppl_meta"] > 1 for r in rows)
