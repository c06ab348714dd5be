"""tools/eval_harness.py: lm-evaluation-harness runs offline on a tiny checkpoint.

The bundled task (choose the true next line of The Winter's Tale among four) is evaluated on a
tiny GPT trained for a few steps on other plays' bytes, through ``--load`` (export + harness) and
``--hf``; the score is a fraction of the items, and the two routes agree exactly.
"""

from __future__ import annotations

import json
import os

import pytest

from megatron.config.fields import ConfigError
from megatron.evaluation import harness
from megatron.evaluation.next_line_task import next_line_items
from megatron.trainer.loop import train
from tests.helpers import tiny_plan
from tools import eval_harness

ITEMS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "tools", "eval_tasks", "shakespeare_next_line.jsonl")


def test_bundled_task_is_well_formed_and_rebuilds_identically(tmp_path):
    from tools import build_eval_task

    with open(ITEMS, encoding="utf-8") as f:
        items = [json.loads(line) for line in f]
    assert len(items) == 200
    for item in items:
        assert len(item["choices"]) == 4 == len(set(item["choices"]))
        assert 0 <= item["label"] < 4 and item["context"].endswith("\n")
        assert all(25 <= len(c) <= 64 for c in item["choices"])
    labels = [item["label"] for item in items]
    assert all(20 <= labels.count(k) <= 80 for k in range(4))  # shuffled, not always the first
    out = tmp_path / "task.jsonl"
    assert build_eval_task.main(["--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == open(ITEMS, encoding="utf-8").read()
    with pytest.raises(ValueError, match="usable lines"):
        next_line_items("too short\n" * 10)


def test_task_files_and_names_resolve(tmp_path):
    plan = harness.plan_tasks(["shakespeare_next_line"])
    assert plan.offline and plan.tasks[0]["dataset_kwargs"]["data_files"]["test"].endswith(".jsonl")
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("task: my_task\ndataset_path: json\n")
    plan = harness.plan_tasks([str(yaml_file), "hellaswag"])
    assert plan.tasks == ["my_task", "hellaswag"] and plan.include_paths == [str(tmp_path)]
    assert not plan.offline
    with pytest.raises(ConfigError, match="--tasks: no such task file"):
        harness.plan_tasks([str(tmp_path / "missing.jsonl")])
    with pytest.raises(ConfigError, match="--tasks"):
        harness.plan_tasks([])


def test_missing_lm_eval_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import builtins

    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ImportError("No module named 'lm_eval'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    assert eval_harness.main(["--hf", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--tasks: lm-evaluation-harness is not installed" in err and "pip install lm-eval" in err


def test_harness_runs_offline_on_a_tiny_checkpoint(tmp_path, shakespeare_prefix, capsys):
    pytest.importorskip("lm_eval", reason="lm-eval is an optional dependency (pip install lm-eval)")
    data = tmp_path / "data.txt"
    data.write_text(f"1 {shakespeare_prefix} plays\n")
    save = str(tmp_path / "ckpt")
    flags = ["--swiglu", "--normalization", "rmsnorm", "--hidden-size", "32", "--seq-length", "128",
             "--train-iters", "4", "--lr", "1e-2", "--data-file-list", str(data), "--split", "1,0,0",
             "--tokenizer-type", "byte", "--eval-iters", "0", "--save", save]
    train(tiny_plan(*flags, mock=False), _env())
    capsys.readouterr()
    assert eval_harness.main(["--load", save, "--limit", "24", "--batch-size", "16"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    path = os.path.join(save, "global_step4", "eval_harness.json")
    assert line.startswith("eval_harness.py: shakespeare_next_line acc ") and line.endswith(path)
    with open(path) as f:
        results = json.load(f)
    scores = results["results"]["shakespeare_next_line"]
    assert 0.0 <= scores["acc,none"] <= 1.0 and 0.0 <= scores["acc_norm,none"] <= 1.0
    assert scores["acc,none"] * 24 == pytest.approx(round(scores["acc,none"] * 24))  # a fraction of 24 items
    assert results["n-samples"]["shakespeare_next_line"]["effective"] == 24
    # The same model through an existing export gives the same scores.
    from megatron.checkpointing.hf_export import export_hf

    export_hf(save, str(tmp_path / "hf"))
    out = str(tmp_path / "again.json")
    assert eval_harness.main(["--hf", str(tmp_path / "hf"), "--limit", "24", "--output", out]) == 0
    with open(out) as f:
        assert json.load(f)["results"]["shakespeare_next_line"] == scores


def _env():
    from megatron.config import DistEnv

    return DistEnv()
