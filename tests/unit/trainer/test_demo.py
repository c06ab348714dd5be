"""The README's first command: the bundled demo's loss falls on real text (shortened run)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_preset_trains_on_shakespeare(repo_root, tmp_path):
    subprocess.run([sys.executable, "tools/prepare_default_corpus.py"], cwd=repo_root, check=True, capture_output=True)
    out = subprocess.run(
        [
            sys.executable, "-W", "ignore", "pretrain_gpt.py",
            "--config", "ALCF/presets/demo.yaml",
            "--train-iters", "30", "--lr-warmup-iters", "5", "--log-interval", "10",
            "--eval-iters", "2", "--save", str(tmp_path / "ckpt"), "--save-interval", "30",
            "--tensorboard-dir", str(tmp_path / "tb"),
        ],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    losses = [float(line.split("| loss ")[1].split()[0]) for line in out.stdout.splitlines() if "| loss " in line]
    assert len(losses) == 3
    assert losses[0] > losses[-1] + 1.5  # e.g. 4.5 -> 2.7 nats per byte
    assert "valid loss at iteration 30" in out.stdout
    assert os.path.isdir(tmp_path / "ckpt" / "global_step30")
