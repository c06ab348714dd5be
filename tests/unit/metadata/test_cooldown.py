"""The metadata cooldown plan (spec oracle 5): a two-stage plan of the continual runner that runs
90 + 10 iterations, continues one LR schedule (no rewarm) and reads only the plain lists in
stage 2, with optimizer and step carried (--reset-data-state)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import yaml

from megatron.config.fields import ConfigError
from megatron.continual.plan import build_plan, load_plan
from megatron.continual.stages import build_stage_specs
from megatron.metadata.cooldown import CooldownRequest, cooldown_plan
from tools.metadata_cooldown_plan import main as plan_main

LR, MIN_LR, WARMUP, TOTAL = 3e-3, 3e-4, 5, 100
TINY = {"num_layers": 2, "hidden_size": 16, "num_attention_heads": 4, "seq_length": 16,
        "micro_batch_size": 2, "log_interval": 1, "eval_iters": 1, "tokenizer_type": "byte",
        "split": "100,0,0"}  # fmt: skip


def single_cosine(step: int) -> float:
    """The one schedule of the whole plan: linear warmup s/W, then a cosine from LR to MIN_LR."""
    if step < WARMUP:
        return LR * step / WARMUP
    x = (step - WARMUP) / (TOTAL - WARMUP)
    return MIN_LR + (LR - MIN_LR) * 0.5 * (1.0 + math.cos(math.pi * x))


def request(tmp_path, **kw) -> CooldownRequest:
    for name in ("meta", "plain"):  # lists of (empty) datasets: plan checks need only the files
        if not (tmp_path / f"{name}.txt").exists():
            (tmp_path / f"{name}.txt").write_text(f"1 {tmp_path / name}_text_document x\n")
            for ext in (".bin", ".idx"):
                (tmp_path / f"{name}_text_document{ext}").touch()
    return CooldownRequest(**{
        "name": "meco", "output_dir": str(tmp_path / "out"), "metadata_data_file_list": str(tmp_path / "meta.txt"),
        "plain_data_file_list": str(tmp_path / "plain.txt"), "cooldown_fraction": 0.1, "train_iters": TOTAL,
        "warmup_iters": WARMUP, "lr": LR, "min_lr": MIN_LR, "launcher": "python", **kw})  # fmt: skip


def test_generated_plan_validates_as_two_runner_stages_with_one_schedule(tmp_path):
    plan = build_plan(cooldown_plan(request(tmp_path)), "cooldown.yaml")
    assert [(s.key, s.train_iters) for s in plan.stages] == [("metadata", 90), ("cooldown", 10)]
    first, second = build_stage_specs(plan, (90, 10))
    assert (first.continues, second.continues) == (False, True)  # stage 2: --reset-data-state
    schedule = ("lr", "min_lr", "lr_warmup_iters", "lr_decay_style", "lr_decay_iters")
    assert [first.flags[k] for k in schedule] == [second.flags[k] for k in schedule]
    assert [first.flags[k] for k in schedule] == [LR, MIN_LR, WARMUP, "cosine", TOTAL]
    assert (first.flags["train_iters"], second.flags["train_iters"]) == (90, 100)
    # Stage 2's blend: the plain list only (no replay of the metadata lists).
    assert second.weights == (0.0, 1.0)
    lines = [ln.split() for ln in second.data_list.splitlines() if not ln.startswith("#")]
    assert [ln[1] for ln in lines] == [str(tmp_path / "plain_text_document")]


def test_schedule_flags_give_the_single_schedule_across_the_boundary(tmp_path):
    from megatron.continual.launch import to_argv
    from megatron.schedules.registry import build_schedule_fn
    from tests.helpers import tiny_plan

    plan = build_plan(cooldown_plan(request(tmp_path)), "cooldown.yaml")
    keys = ("lr", "min_lr", "lr_warmup_iters", "lr_decay_style", "lr_decay_iters", "train_iters")
    fns = [build_schedule_fn(tiny_plan(*to_argv({k: s.flags[k] for k in keys})))
           for s in build_stage_specs(plan, (90, 10))]
    assert fns[0][1] == fns[1][1]  # same fingerprint: the trainer resumes the schedule as is
    assert [LR * fns[1][0](s) for s in range(TOTAL)] == pytest.approx([single_cosine(s) for s in range(TOTAL)])
    assert fns[1][0](90) < fns[1][0](89) < 1.0  # still decaying at the boundary: no rewarm


def test_wsd_anneals_exactly_over_the_plain_stage(tmp_path):
    plan = build_plan(cooldown_plan(request(tmp_path, schedule="wsd")), "cooldown.yaml")
    _, second = build_stage_specs(plan, (90, 10))
    assert second.flags["lr_constant_plus_cooldown_frac"] == pytest.approx(0.1)


def test_bad_requests(tmp_path):
    with pytest.raises(ConfigError, match="--metadata-cooldown-fraction"):
        request(tmp_path, cooldown_fraction=1.0)
    with pytest.raises(ConfigError, match="--plain-data-file-list"):
        request(tmp_path, plain_data_file_list=str(tmp_path / "meta.txt"))
    with pytest.raises(ConfigError, match="--lr-warmup-iters"):
        request(tmp_path, train_iters=10, warmup_iters=9)
    with pytest.raises(ConfigError, match="--train-iters"):
        request(tmp_path, train_iters=3, warmup_iters=0)
    with pytest.raises(ConfigError, match="--schedule: cosine restarts"):
        request(tmp_path, schedule="cosine")


def test_tool_writes_a_plan_the_runner_loads(tmp_path, capsys):
    request(tmp_path)  # the two lists
    out = tmp_path / "plan.yaml"
    argv = ["--output-dir", str(tmp_path / "o"), "--metadata-data-file-list", str(tmp_path / "meta.txt"),
            "--plain-data-file-list", str(tmp_path / "plain.txt"), "--train-iters", "100"]
    assert plan_main([*argv, "--output", str(out)]) == 0
    assert out.read_text().startswith("# Metadata cooldown (--metadata-cooldown-fraction 0.1): 90 iterations")
    plan = load_plan(str(out))  # unknown keys would be refused here, naming file:line
    assert [s.train_iters for s in plan.stages] == [90, 10] and plan.launcher == "train_alcf"
    argv[5] = str(tmp_path / "meta.txt")
    assert plan_main(argv) == 2
    assert "--plain-data-file-list" in capsys.readouterr().err


def _stage_log(root, key: str) -> str:
    return (root / key / "stage.log").read_text()


def _lrs_by_iteration(text: str) -> dict[int, float]:
    """``iter N/M | ... | lr X``: the LR of step N - 1."""
    return {int(m[1]): float(m[2]) for m in re.finditer(r"iter\s+(\d+)/\d+ \|.*?\| lr (\S+)", text)}


@pytest.fixture
def package_lists(package_jsonl, tmp_path) -> dict[str, str]:
    """Real package metadata (200-character texts), with url/title prefixes and plain."""
    from megatron.config.data import DataConfig
    from megatron.data.preprocess import tokenize_to_indexed
    from megatron.metadata.preprocess import MetadataOptions, tokenize_with_metadata

    byte = DataConfig(tokenizer_type="byte")
    short = tmp_path / "docs.jsonl"
    with open(package_jsonl) as f:
        short.write_text("".join(json.dumps({**r, "text": r["text"][:200]}) + "\n" for r in map(json.loads, f)))
    meta = tokenize_with_metadata([str(short)], str(tmp_path / "m"), byte,
                                  MetadataOptions(keys=("url", "title"), probability=1.0))
    plain = tokenize_to_indexed([str(short)], str(tmp_path / "p"), byte).prefixes["text"]
    (tmp_path / "meta.txt").write_text(f"1 {meta.text_prefix} packages\n")
    (tmp_path / "plain.txt").write_text(f"1 {plain} packages\n")
    return {"meta": meta.text_prefix, "mask": meta.lossmask_prefix, "plain": plain}


def test_launcher_runs_the_generated_plan(package_lists, tmp_path, repo_root):
    """The launcher path: the tool's plan file through CPT_PLAN=... bash train_alcf.sh (dry run)."""
    out = tmp_path / "plan.yaml"
    assert plan_main(["--output-dir", str(tmp_path / "o"), "--metadata-data-file-list", str(tmp_path / "meta.txt"),
                      "--plain-data-file-list", str(tmp_path / "plain.txt"), "--train-iters", "100",
                      "--output", str(out)]) == 0
    yaml_plan = yaml.safe_load(out.read_text())
    yaml_plan["args"] = TINY
    out.write_text(yaml.safe_dump(yaml_plan))
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_FILE_LIST", "PBS_NODEFILE", "SLURM_JOB_NODELIST")}
    done = subprocess.run(["bash", "train_alcf.sh"], cwd=repo_root, capture_output=True, text=True, timeout=300,
                          env={**env, "CPT_PLAN": str(out), "DRY_RUN": "1", "PYTHON_EXEC": sys.executable})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stage metadata: to run, ends at iteration 90; data " in done.stdout
    assert "stage cooldown: to run, ends at iteration 100; data " in done.stdout and "replay [0.0, 1.0]" in done.stdout


def test_cooldown_plan_runs_90_plus_10_without_rewarm_on_plain_lists(package_lists, tmp_path, repo_root):
    """Spec oracle 5 through tools/continual_run.py (about 12 s on an idle 2-core CPU: 2 trainer starts)."""
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(cooldown_plan(request(tmp_path, args=TINY))))
    done = subprocess.run([sys.executable, "-W", "ignore", os.path.join(repo_root, "tools", "continual_run.py"),
                           "--plan", str(path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    root = tmp_path / "out" / "meco"
    s1, s2 = _stage_log(root, "metadata"), _stage_log(root, "cooldown")

    # 90 + 10 iterations; stage 2 continues stage 1's step and optimizer, data position reset.
    lrs1, lrs2 = _lrs_by_iteration(s1), _lrs_by_iteration(s2)
    assert sorted(lrs1) == list(range(1, 91)) and sorted(lrs2) == list(range(91, 101))
    assert "--reset-data-state: data position reset (checkpoint had consumed 180 samples)" in s2
    final = json.loads((root / "cooldown" / "global_step100" / "run_metadata.json").read_text())
    assert (final["iteration"], final["consumed_samples"], final["data"]["blend_counts"]) == (100, 20, [20])

    # No rewarm: every logged LR is the single schedule's (3 significant digits in the log).
    logged = {**lrs1, **lrs2}
    assert [logged[n] for n in range(1, 101)] == pytest.approx([single_cosine(n - 1) for n in range(1, 101)],
                                                               rel=2e-3, abs=1e-12)
    assert lrs2[91] == pytest.approx(single_cosine(90), rel=2e-3) and lrs2[91] < lrs1[90]

    # Stage 1 trains with the metadata masks; stage 2 opens only the plain dataset, no mask.
    assert f"loss mask {package_lists['mask']}: metadata tokens of {package_lists['meta']}" in s1
    assert "trainable of" in s1
    data2 = [ln.split()[1] for ln in (root / "cooldown" / "data_list.txt").read_text().splitlines()
             if not ln.startswith("#")]
    assert data2 == [package_lists["plain"]] and final["config"]["--data-file-list"] == str(root / "cooldown" / "data_list.txt")
    assert "data train: 1 datasets" in s2 and "loss mask" not in s2 and "trainable of" not in s2
    assert "lossmask" not in s2 and package_lists["meta"] not in s2
