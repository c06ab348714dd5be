"""The continual stage runner: markers, resumption inside a stage, carry-optimizer stages,
layout changes, and bad plans refused before any stage starts (continual.md section 8, item 3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from megatron.config.fields import ConfigError
from megatron.continual.launch import Launch
from megatron.continual.plan import PlanError, load_plan
from megatron.continual.runner import EXIT_DONE, PlanRunner

TINY = {"num_layers": 2, "hidden_size": 16, "num_attention_heads": 4, "seq_length": 16,
        "micro_batch_size": 2, "log_interval": 1, "eval_iters": 1, "tokenizer_type": "byte"}


def write_plan(path, lists, *, name="run", stages=("a", "b", "code"), method=None, **extra):
    plan = {
        "name": name, "output_dir": str(path.parent / "out"), "launcher": "python", "args": dict(TINY),
        "train_iters_per_stage": 4,
        "method": method or {"lr": 3.0e-3, "min_lr": 3.0e-4, "warmup_iters": 1, "schedule": "cosine",
                             "replay": {"ratio": 0.5}},
        "stages": [{"key": f"s{i + 1}", "data": lists[k], "eval_data": lists[f"eval_{k}"]}
                   for i, k in enumerate(stages)],
        **extra,
    }
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return str(path)


def run_plan(plan_path, repo_root, **kw):
    return subprocess.run([sys.executable, "-W", "ignore", os.path.join(repo_root, "tools", "continual_run.py"),
                           "--plan", plan_path], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}, **kw)


def final_weights(stage_dir):
    import torch

    tag = open(os.path.join(stage_dir, "latest")).read().strip()
    return torch.load(os.path.join(stage_dir, tag, "mp_rank_00_model_states.pt"), weights_only=False)["module"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equal(b[k]), k


@pytest.mark.slow
def test_sigterm_mid_stage_then_rerun_is_bit_identical_to_an_uninterrupted_run(cpt_lists, repo_root, tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "cut").mkdir()
    args = {"save_interval": 2, "eval_interval": 1, "eval_iters": 60}
    ref = write_plan(tmp_path / "ref" / "plan.yaml", cpt_lists, args={**TINY, **args})
    cut = write_plan(tmp_path / "cut" / "plan.yaml", cpt_lists, args={**TINY, **args})
    done = run_plan(ref, repo_root)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen([sys.executable, "-W", "ignore", "tools/continual_run.py", "--plan", cut],
                            cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "saved checkpoint" in line and line.rstrip().endswith(os.path.join("s2", "global_step2")):
            proc.send_signal(signal.SIGTERM)
            break
    lines.append(proc.communicate(timeout=300)[0])
    assert proc.returncode == 75, "".join(lines)[-3000:]
    root, ref_root = tmp_path / "cut" / "out" / "run", tmp_path / "ref" / "out" / "run"
    assert (root / "s1" / "STAGE_DONE.json").exists() and not (root / "s2" / "STAGE_DONE.json").exists()
    stopped_at = int((root / "s2" / "latest").read_text().strip().removeprefix("global_step"))
    assert stopped_at in (2, 3)
    assert not (root / "s3").joinpath("latest").exists()

    again = run_plan(cut, repo_root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage s1: finished" in again.stderr and "skipped" in again.stderr
    s2_log = (root / "s2" / "stage.log").read_text()
    assert f"resumed at iteration {stopped_at}" in s2_log and "--finetune" not in s2_log.split("# ")[-1].split("\n")[0]
    s3_log = (root / "s3" / "stage.log").read_text()
    assert f"--finetune: loaded weights of {root / 's2'}/global_step4" in s3_log
    assert (root / "s1" / "stage.log").read_text().count("\n# ") == 0  # stage 1 ran once
    for key in ("s1", "s2", "s3"):
        assert_same_weights(final_weights(ref_root / key), final_weights(root / key))
    marker = json.loads((root / "s3" / "STAGE_DONE.json").read_text())
    assert {"key", "checkpoint", "iteration", "tokens", "command", "config_hash", "started", "finished"} <= set(marker)
    assert marker["iteration"] == 4 and marker["replay"]["weights"] == pytest.approx([0.25, 0.25, 0.5])

    # The plan changed after stage 1 finished: refused, naming the stage and the field.
    changed = write_plan(tmp_path / "cut" / "plan.yaml", cpt_lists, args={**TINY, **args},
                         method={"lr": 2.0e-3, "min_lr": 3.0e-4, "warmup_iters": 1, "replay": {"ratio": 0.5}})
    refused = run_plan(changed, repo_root)
    assert refused.returncode == 2
    assert "stage 's1': finished with another configuration" in refused.stderr
    assert "flag.lr: 0.003 -> 0.002" in refused.stderr
