"""--dry-run prints the plan and DeepSpeed dict and never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys

CODE = """
import sys, json
sys.argv = ["pretrain_gpt.py", "--mock-data", "--train-iters", "7", "--num-layers", "2",
            "--hidden-size", "32", "--num-attention-heads", "4", "--dry-run"]
import pretrain_gpt
status = pretrain_gpt.main()
assert "torch" not in sys.modules, "dry-run imported torch"
assert "deepspeed" not in sys.modules
sys.exit(status)
"""


def test_dry_run_prints_plan_without_torch(repo_root):
    out = subprocess.run([sys.executable, "-c", CODE], cwd=repo_root, capture_output=True, text=True, check=True)
    printed = json.loads(out.stdout)
    assert printed["plan"]["train_iters"] == 7
    assert printed["plan"]["padded_vocab_size"] == 384
    assert printed["deepspeed"]["train_batch_size"] == 1


def test_config_error_exits_2_with_one_line(repo_root):
    out = subprocess.run(
        [sys.executable, "pretrain_gpt.py", "--mock-data", "--train-iters", "1", "--hidden-size", "30", "--dry-run"],
        cwd=repo_root, capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "pretrain_gpt.py: error: --num-attention-heads: 12 does not divide --hidden-size 30"
    ]


def test_dry_run_file_holds_the_printed_plan(repo_root, tmp_path):
    # Programs (the continual runner) read the plan from the file, never from console text.
    path = tmp_path / "plan.json"
    out = subprocess.run(
        [sys.executable, "pretrain_gpt.py", "--mock-data", "--train-iters", "3", "--dry-run-file", str(path)],
        cwd=repo_root, capture_output=True, text=True, check=True,
    )
    written = json.loads(path.read_text())
    assert written == json.loads(out.stdout)
    assert written["plan"]["train_iters"] == 3
    assert not (tmp_path / "plan.json.tmp").exists()
