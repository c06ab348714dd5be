"""tools/continual_eval.py on real text: a 3-stage plan with two finished stages gives a 2 x 4
matrix (3 stage columns + 1 extra), a normalizer row, plots; a rerun measures nothing; bad plans
fail before any work."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from megatron.config import ConfigError, DistEnv
from megatron.trainer.loop import train
from tests.helpers import tiny_plan
from tools import continual_eval

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]


def _lists(tmp_path, three_corpora) -> dict[str, str]:
    out = {}
    for name, prefix in three_corpora.items():
        path = tmp_path / f"{name}.txt"
        path.write_text(f"1.0 {prefix} {name}\n")
        out[name] = str(path)
    return out


def _plan(tmp_path, lists, **extra) -> str:
    doc = {"name": "demo", "output_dir": str(tmp_path / "out"),
           "stages": [{"key": k, "data": v, "eval_data": v} for k, v in lists.items()], **extra}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def _finish_stage(root, key, data_list, load=None) -> str:
    save = os.path.join(root, key)
    flags = ["--train-iters", "2", "--save", save, "--data-file-list", data_list, "--split", "100,0,0",
             "--tokenizer-type", "byte"]
    if load:
        flags += ["--load", load, "--finetune"]
    train(tiny_plan(*flags, mock=False), DistEnv())
    with open(os.path.join(save, "STAGE_DONE.json"), "w") as f:
        json.dump({"key": key, "checkpoint": save}, f)
    return save


def test_matrix_of_finished_stages_is_idempotent(tmp_path, three_corpora, capsys):
    lists = _lists(tmp_path, three_corpora)
    plan = _plan(tmp_path, lists)
    root = str(tmp_path / "out" / "demo")
    first = _finish_stage(root, "comedy", lists["comedy"])
    _finish_stage(root, "history", lists["history"], load=first)
    argv = ["--plan", plan, "--extra-eval", f"tragedy2={lists['tragedy']}", "--normalizer", first,
            "--max-sequences", "6"]
    assert continual_eval.main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["measured_cells"] == 3 * 4  # 2 checkpoints + the normalizer, 4 sets each
    out = os.path.join(root, "eval")
    with open(os.path.join(out, "matrix.json")) as f:
        matrix = json.load(f)
    assert matrix["checkpoints"] == ["comedy", "history"]
    assert matrix["eval_sets"] == ["comedy", "history", "tragedy", "tragedy2"]
    loss = np.array(matrix["loss"], dtype=float)
    assert loss.shape == (2, 4) and np.isfinite(loss).all()
    assert (np.array(matrix["ci_low"]) < loss).all() and (loss < np.array(matrix["ci_high"])).all()
    m = matrix["metrics"]
    assert m["id"] == pytest.approx((loss[0, 0] + loss[1, 1]) / 2)
    assert m["backward"] == pytest.approx(loss[1, 0])
    assert m["forward"] == pytest.approx((loss[0, 1] + loss[0, 2] + loss[1, 2]) / 3)
    # The normalizer is the first stage's checkpoint: its row's normalized losses are exactly 0.
    assert matrix["normalized_loss"][0] == [0.0, 0.0, 0.0, 0.0]
    for name in ("matrix.png", "matrix_lines.png", "cells.jsonl"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert continual_eval.main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["measured_cells"] == 0
    with open(os.path.join(out, "cells.jsonl")) as f:
        assert sum(1 for _ in f) == 12


def test_bad_plans_fail_before_work(tmp_path, three_corpora, capsys):
    lists = _lists(tmp_path, three_corpora)
    plan = _plan(tmp_path, {**lists, "extra": str(tmp_path / "missing.txt")})
    assert continual_eval.main(["--plan", plan]) == 2
    assert "stage 'extra': eval_data" in capsys.readouterr().err
    no_eval = tmp_path / "no_eval.yaml"
    no_eval.write_text(yaml.safe_dump({"name": "x", "stages": [{"key": "a", "data": "d.txt"}]}))
    with pytest.raises(ConfigError, match="stage 'a' has no 'eval_data'"):
        from megatron.continual.eval_plan import read_eval_plan

        read_eval_plan(str(no_eval))
    assert continual_eval.main(["--plan", _plan(tmp_path, lists), "--extra-eval", "nope.txt"]) == 2
    assert "--extra-eval: nope.txt does not exist" in capsys.readouterr().err
