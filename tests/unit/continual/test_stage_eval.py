"""eval_after_each_stage: the matrix row of every finished stage goes to cells.jsonl, matrix.json
and TensorBoard (step = stage index; ID/backward/forward of the rows so far), once; the runner
evaluates after each stage, and a rerun does no evaluation work."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from megatron.continual.stage_eval import ROWS_FILE, row_scalars, write_rows
from tests.unit.continual.test_runner import TINY, run_plan, write_plan

# The spec's 3 x 3 example (continual.md section 8, oracle 5d).
E = [[1.0, 2.0, 3.0], [1.5, 1.2, 2.5], [1.8, 1.4, 1.1]]
KEYS = ["s1", "s2", "s3"]


def _matrix(rows: int, normalizer: list[float] | None = None) -> dict:
    m = {"checkpoints": KEYS[:rows], "eval_sets": KEYS, "loss": E[:rows]}
    if normalizer is not None:
        m["normalizer"] = normalizer
    return m


def _events(tb_dir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb_dir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_row_scalars_are_the_metrics_of_the_rows_so_far():
    first = row_scalars(_matrix(3), "s1", KEYS)
    assert first == pytest.approx({"forgetting/loss/s1": 1.0, "forgetting/loss/s2": 2.0,
                                   "forgetting/loss/s3": 3.0, "forgetting/id": 1.0, "forgetting/forward": 2.5})
    second = row_scalars(_matrix(3), "s2", KEYS)
    assert second["forgetting/id"] == pytest.approx(1.1)  # (1.0 + 1.2) / 2
    assert second["forgetting/backward"] == pytest.approx(1.5)
    assert second["forgetting/forward"] == pytest.approx(2.5)  # (2.0 + 3.0 + 2.5) / 3
    last = row_scalars(_matrix(3, [0.5, 0.5, 0.5]), "s3", KEYS)
    assert (last["forgetting/id"], last["forgetting/backward"], last["forgetting/forward"]) == \
        pytest.approx((1.1, 1.566667, 2.5), rel=1e-6)
    assert last["forgetting/normalized_backward"] == pytest.approx(1.566667 - 0.5, rel=1e-6)


def test_rows_are_written_once_and_read_back(tmp_path):
    tb = str(tmp_path / "tb")
    assert write_rows(_matrix(1), KEYS, tb) == ["s1"]
    assert write_rows(_matrix(1), KEYS, tb) == []
    incomplete = _matrix(2)
    incomplete["loss"] = [E[0], [1.5, None, 2.5]]  # a row with a missing stage cell waits
    assert write_rows(incomplete, KEYS, tb) == []
    assert write_rows(_matrix(3), KEYS, tb) == ["s2", "s3"]
    events = _events(tb)
    assert events["forgetting/loss/s1"] == [(0, 1.0), (1, 1.5), (2, pytest.approx(1.8))]
    assert events["forgetting/backward"] == [(1, 1.5), (2, pytest.approx(1.566667, rel=1e-6))]
    assert json.loads((tmp_path / "tb" / ROWS_FILE).read_text()) == KEYS


@pytest.mark.slow
def test_runner_evaluates_after_each_stage_and_a_rerun_does_no_work(cpt_lists, tmp_path, repo_root):
    path = write_plan(tmp_path / "plan.yaml", cpt_lists, args={**TINY}, eval_after_each_stage=True,
                      eval_max_sequences=24, train_iters_per_stage=2)
    done = run_plan(path, repo_root)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stderr
    # The row of stage k is evaluated before stage k+1 starts.
    for key, following in [("s1", "stage s2 (2/3)"), ("s2", "stage s3 (3/3)")]:
        line = f"eval_after_each_stage: rows ['{key}']: 3 cells measured, TensorBoard rows ['{key}']"
        assert line in log and log.index(line) < log.index(following), log[-3000:]
    assert "eval_after_each_stage: rows ['s3']: 3 cells measured" in log
    root = tmp_path / "out" / "run"
    cells = [json.loads(line) for line in (root / "eval" / "cells.jsonl").read_text().splitlines()]
    assert [(c["checkpoint"], c["eval_set"]) for c in cells] == [(r, e) for r in KEYS for e in KEYS]
    assert all(c["sequences"] == 24 and c["loss"] > 0 for c in cells)
    loss = {(c["checkpoint"], c["eval_set"]): c["loss"] for c in cells}
    matrix = json.loads((root / "eval" / "matrix.json").read_text())
    assert matrix["checkpoints"] == KEYS and (root / "eval" / "matrix.png").is_file()
    events = _events(str(root / "eval" / "tensorboard"))
    for e in KEYS:
        assert events[f"forgetting/loss/{e}"] == [(k, pytest.approx(loss[(r, e)], rel=1e-6))
                                                  for k, r in enumerate(KEYS)]
    assert [s for s, _ in events["forgetting/id"]] == [0, 1, 2]
    assert events["forgetting/id"][1][1] == pytest.approx((loss[("s1", "s1")] + loss[("s2", "s2")]) / 2, rel=1e-6)
    assert events["forgetting/backward"][0][0] == 1
    assert events["forgetting/backward"][-1][1] == pytest.approx(matrix["metrics"]["backward"], rel=1e-6)
    # A rerun: every stage is skipped and nothing is evaluated again.
    before = (root / "eval" / "cells.jsonl").read_text()
    again = run_plan(path, repo_root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "eval_after_each_stage" not in again.stderr
    assert (root / "eval" / "cells.jsonl").read_text() == before
    assert _events(str(root / "eval" / "tensorboard")) == events
    # A row lost between a stage's marker and its evaluation is caught up by the next run.
    (root / "eval" / "tensorboard" / ROWS_FILE).write_text(json.dumps(["s1", "s2"]))
    caught = run_plan(path, repo_root)
    assert "eval_after_each_stage: rows ['s3']: 0 cells measured, TensorBoard rows ['s3']" in caught.stderr


def test_bad_eval_plans_are_refused_before_any_stage(cpt_lists, tmp_path):
    from megatron.continual.plan import PlanError, load_plan

    path = write_plan(tmp_path / "plan.yaml", cpt_lists, eval_after_each_stage=True)
    raw = yaml.safe_load(open(path))
    del raw["stages"][1]["eval_data"]
    open(path, "w").write(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(PlanError, match=r"eval_after_each_stage: stages \['s2'\] have no eval_data"):
        load_plan(path)
    raw["stages"][1]["eval_data"] = "missing_eval.txt"
    open(path, "w").write(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(PlanError, match=r"stages\[1\].eval_data: no such data file list .*missing_eval.txt"):
        load_plan(path)
    raw["stages"][1]["eval_data"] = cpt_lists["eval_b"]
    raw["eval_max_sequences"] = 0
    open(path, "w").write(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(PlanError, match="eval_max_sequences must be a positive integer"):
        load_plan(path)
    assert not os.path.exists(tmp_path / "out")


def test_the_evaluator_reads_the_runners_resolved_plan(cpt_lists, tmp_path, monkeypatch):
    from megatron.continual.eval_plan import read_eval_plan
    from megatron.continual.plan import build_plan
    from megatron.continual.stage_eval import write_eval_plan

    path = write_plan(tmp_path / "plan.yaml", cpt_lists, eval_after_each_stage=True)
    raw = yaml.safe_load(open(path))
    raw["name"] = "renamed"  # e.g. continual_run.py --exp-name renamed
    plan = build_plan(raw, path)
    monkeypatch.chdir(tmp_path.parent)  # the evaluator may run from anywhere
    seen = read_eval_plan(write_eval_plan(plan))
    assert seen.root == plan.root == str(tmp_path / "out" / "renamed")
    assert [(s.key, s.eval_data) for s in seen.stages] == [(s.key, s.eval_data) for s in plan.stages]
