"""``pretrain_diff_gpt.py`` is ``pretrain_gpt.py --objective mdm``."""

from __future__ import annotations

import json
import subprocess
import sys

FLAGS = ["--mock-data", "--train-iters", "3", "--num-layers", "2", "--hidden-size", "32",
         "--num-attention-heads", "4", "--dry-run"]


def test_alias_entry_point_resolves_an_mdm_run(repo_root):
    out = subprocess.run([sys.executable, "pretrain_diff_gpt.py", *FLAGS, "--num-mc", "8"],
                         cwd=repo_root, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["plan"]["objective"] == "mdm"
    bad = subprocess.run([sys.executable, "pretrain_diff_gpt.py", *FLAGS, "--objective", "ar"],
                         cwd=repo_root, capture_output=True, text=True)
    assert bad.returncode == 2 and "--objective: given twice with different values ('mdm' from --objective and 'ar' from --objective)" in bad.stderr
