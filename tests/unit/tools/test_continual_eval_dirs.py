"""``--output-dir`` means the same to continual_eval.py as to continual_run.py (the parent of the
run root): after ``continual_run.py --plan P --output-dir X``, ``continual_eval.py --plan P
--output-dir X`` finds the stages, and without it the tool says where it looked."""

from __future__ import annotations

import json
import os

import yaml

from megatron.continual.eval_plan import finished_stages, read_eval_plan
from tools import continual_eval


def _plan(tmp_path) -> str:
    lst = tmp_path / "a.txt"
    lst.write_text("1.0 some/prefix\n")
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"name": "demo", "output_dir": str(tmp_path / "planned"),
                                    "stages": [{"key": "a", "data": str(lst), "eval_data": str(lst)}]}))
    return str(path)


def _finish(root: str, key: str) -> str:
    stage = os.path.join(root, key)
    os.makedirs(stage)
    with open(os.path.join(stage, "STAGE_DONE.json"), "w") as f:
        json.dump({"key": key, "checkpoint": stage}, f)
    return stage


def test_output_dir_moves_the_run_root_as_for_the_runner(tmp_path, capsys):
    plan = _plan(tmp_path)
    moved = str(tmp_path / "moved")
    stage = _finish(os.path.join(moved, "demo"), "a")
    assert read_eval_plan(plan).root == str(tmp_path / "planned" / "demo")
    moved_plan = read_eval_plan(plan, output_dir=moved)
    assert moved_plan.root == os.path.join(moved, "demo")
    assert finished_stages(moved_plan) == [("a", stage)]
    # Without --output-dir the run is not found: an error naming where it looked, not an empty matrix.
    assert continual_eval.main(["--plan", plan]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "planned" / "demo") in err and "--output-dir" in err
