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
from megatron.continual.runner import PlanRunner

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


def prepare(plan_path):
    return PlanRunner(load_plan(plan_path), Launch(launcher="python")).prepare()


def test_unknown_plan_key_names_file_and_line(cpt_lists, tmp_path):
    path = write_plan(tmp_path / "plan.yaml", cpt_lists)
    text = open(path).read().replace("train_iters_per_stage: 4", "train_iters_per_stage: 4\nwarmup_usage: first")
    open(path, "w").write(text)
    line = text.splitlines().index("warmup_usage: first") + 1
    with pytest.raises(PlanError, match=rf"plan.yaml:{line}: unknown key 'warmup_usage' in the plan"):
        load_plan(path)
    text = text.replace("warmup_usage: first\n", "").replace("  schedule: cosine", "  schedul: cosine")
    open(path, "w").write(text)
    with pytest.raises(PlanError, match=r"plan.yaml:\d+: unknown key 'schedul' in method"):
        load_plan(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["stages"][1].update(data="nope.txt"), r"stages\[1\].data: no such data file list .*nope.txt"),
        (lambda p: p["method"].update(replay={"weights": [0.5, 0.4, 0.2]}), r"alpha_0 \+ alpha_D \+ alpha_B must be 1"),
        (lambda p: p["method"].update(schedule="wsd"), "wsd continues one LR schedule across stages, which needs carry_optimizer: true"),
        (lambda p: p["method"].update(schedule="cosine", carry_optimizer=True), "cosine restarts its schedule every stage"),
        (lambda p: p["method"].update(schedule="wsd", carry_optimizer=True, warmup_usage="all"), "all would rewarm every stage"),
        (lambda p: p["stages"][2].update(method={"lr": 1e-3, "schedule": "wsd", "carry_optimizer": True})
         or p["method"].update(schedule="wsd", carry_optimizer=True), r"stage 's3': method.lr: 0.001 differs"),
        (lambda p: p["args"].update(train_iters=9), r"args \['train_iters'\] are set by the runner"),
        (lambda p: p.update(init_checkpoint="/nonexistent/ckpt"), "init_checkpoint: no such directory"),
        (lambda p: p["stages"][0].pop("data"), r"stages\[0\]: a stage needs at least 'key' and 'data'"),
        (lambda p: p["stages"][1].update(key="s1"), "stage keys must be unique"),
        (lambda p: p["stages"][1].update(nproc=2), "stages with nproc > 1 need launcher: train_alcf"),
        (lambda p: p["args"].update(num_attention_heads=3), "stage 's1': the trainer refused the stage: .*num-attention-heads"),
    ],
)
def test_bad_plans_are_refused_before_any_stage_starts(cpt_lists, tmp_path, change, message):
    path = write_plan(tmp_path / "plan.yaml", cpt_lists)
    raw = yaml.safe_load(open(path))
    change(raw)
    open(path, "w").write(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match=message):
        prepare(path)
    assert not any(os.path.isfile(os.path.join(dirpath, "latest")) for dirpath, _, _ in os.walk(tmp_path))


def test_half_written_init_checkpoint_is_refused(cpt_lists, tmp_path):
    init = tmp_path / "base"
    (init / "global_step10").mkdir(parents=True)
    (init / "latest").write_text("global_step10")
    path = write_plan(tmp_path / "plan.yaml", cpt_lists, init_checkpoint=str(init))
    with pytest.raises(PlanError, match="global_step10 is missing or half-written"):
        prepare(path)
    (init / "latest").unlink()
    with pytest.raises(PlanError, match="holds no checkpoint"):
        prepare(path)


def test_dry_run_writes_each_stages_blended_list(cpt_lists, tmp_path, repo_root):
    path = write_plan(tmp_path / "plan.yaml", cpt_lists, method={
        "lr": 3e-3, "min_lr": 3e-4, "schedule": "ar-cosine", "replay": {"ratio": 0.5}})
    specs, markers, dry, _ = prepare(path)
    assert markers == {}
    from megatron.data.data_list import parse_data_file_list

    weights = [[e.weight for e in parse_data_file_list(s.data_list_path)] for s in specs]
    assert weights == [[1.0], [0.5, 0.5], [0.25, 0.25, 0.5]]
    assert [e.corpus for e in parse_data_file_list(specs[2].data_list_path)] == ["s1", "s2", "s3"]
    # AR peaks: eta_min + (eta_0 - eta_min)(1 + cos(pi i/(i+1)))/2 in each stage's schedule.
    assert [d["schedule"]["lr"] for d in dry.values()] == pytest.approx([3e-3, 1.65e-3, 9.75e-4], abs=1e-12)
    assert [d["plan"]["train_iters"] for d in dry.values()] == [4, 4, 4]


def _wsd_plan(tmp_path, cpt_lists, **extra):
    return write_plan(tmp_path / "plan.yaml", cpt_lists, stages=("a", "b"), launcher="train_alcf", method={
        "lr": 3e-3, "min_lr": 3e-4, "warmup_iters": 1, "schedule": "wsd", "cooldown_fraction": 0.25,
        "carry_optimizer": True, "replay": {"ratio": 0.75}}, **extra)


def _lrs(log_text):
    return [float(line.split("| lr ")[1].split()[0]) for line in log_text.splitlines() if "| lr " in line]


@pytest.mark.slow
def test_carry_optimizer_plan_continues_one_schedule_through_the_launcher(cpt_lists, tmp_path, repo_root):
    plan = _wsd_plan(tmp_path, cpt_lists, args={**TINY, "save_interval": 2}, delete_previous_checkpoints=True)
    done = run_plan(plan, repo_root)
    assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / "out" / "run"
    # delete_previous_checkpoints: once s2 finished, s1 keeps only its final checkpoint.
    assert sorted(p.name for p in (root / "s1").glob("global_step*")) == ["global_step4"]
    assert sorted(p.name for p in (root / "s2").glob("global_step*")) == ["global_step6", "global_step8"]
    s1, s2 = ((root / k / "stage.log").read_text() for k in ("s1", "s2"))
    assert "--reset-data-state: data position reset (checkpoint had consumed 8 samples)" in s2
    assert "[train_alcf.sh] command:" in s2 and "--reset-data-state" in s2
    # One WSD schedule over 8 steps: warmup 1, peak through stage 1, cooldown (2 steps) in stage 2.
    assert _lrs(s1) == [0.0, 3e-3, 3e-3, 3e-3]
    assert _lrs(s2)[:2] == [3e-3, 3e-3] and _lrs(s2)[-1] < 3e-3
    marker = json.loads((root / "s2" / "STAGE_DONE.json").read_text())
    assert marker["iteration"] == 8 and marker["tokens"] == 4 * 2 * 16
    assert marker["first_lrs"] == ["3.000e-03", "3.000e-03", "3.000e-03"]
    meta = json.loads((root / "s2" / "global_step8" / "run_metadata.json").read_text())
    assert meta["consumed_samples"] == 8 and meta["data"]["blend_counts"] == [2, 6]


@pytest.mark.slow
def test_stage_at_another_data_parallel_size_converts_and_continues(cpt_lists, tmp_path, repo_root):
    args = {**TINY, "zero_stage": 1, "global_batch_size": 4}
    path = _wsd_plan(tmp_path, cpt_lists, args=args)
    raw = yaml.safe_load(open(path))
    raw["stages"][0]["nproc"] = 2
    open(path, "w").write(yaml.safe_dump(raw, sort_keys=False))
    done = run_plan(path, repo_root)
    assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / "out" / "run"
    assert (root / "s1" / "latest_universal").read_text().strip() == "global_step4_universal"
    s2 = (root / "s2" / "stage.log").read_text()
    assert "--universal-checkpoint" in s2 and "saved at TP=1 PP=1 DP=2 ZeRO-1) loaded at TP=1 PP=1 DP=1" in s2
    assert "LR of steps 4-6: 3.000e-03" in s2
    meta = json.loads((root / "s2" / "global_step8" / "run_metadata.json").read_text())
    assert (meta["iteration"], meta["plan"]["dp"], meta["plan"]["grad_accum_steps"]) == (8, 1, 2)


def test_init_checkpoint_defaults_to_the_recorded_pre_cooldown_checkpoint(cpt_lists, tmp_path):
    from megatron.continual.runner import resolve_init

    base = tmp_path / "base"
    for step in (6, 10):
        (base / f"global_step{step}").mkdir(parents=True)
        (base / f"global_step{step}" / "run_metadata.json").write_text(json.dumps({"iteration": step}))
    (base / "latest").write_text("global_step10")
    plan = load_plan(write_plan(tmp_path / "plan.yaml", cpt_lists, init_checkpoint=str(base)))
    assert resolve_init(plan).iteration == 10
    (base / "pre_cooldown_checkpoint.txt").write_text("global_step6")
    init = resolve_init(plan)
    assert init.iteration == 6 and init.load_dir == os.path.join(plan.root, "_init")
    assert open(os.path.join(init.load_dir, "latest")).read() == "global_step6"
    assert os.path.realpath(os.path.join(init.load_dir, "global_step6")) == str(base / "global_step6")


def test_launcher_runs_a_plan_from_cpt_plan(cpt_lists, tmp_path, repo_root):
    path = write_plan(tmp_path / "plan.yaml", cpt_lists, stages=("a", "code"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_FILE_LIST", "PBS_NODEFILE", "SLURM_JOB_NODELIST")}
    out = subprocess.run(["bash", "train_alcf.sh"], cwd=repo_root, capture_output=True, text=True, timeout=300,
                         env={**env, "CPT_PLAN": path, "DRY_RUN": "1", "PYTHON_EXEC": sys.executable})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "stage s1: to run, ends at iteration 4; data " in out.stdout
    assert "stage s2: to run, ends at iteration 4" in out.stdout and "replay [0.5, 0.5]" in out.stdout
    assert (tmp_path / "out" / "run" / "s2" / "data_list.txt").exists()


def test_tokens_per_stage_become_iterations_of_the_trainers_batch(cpt_lists, tmp_path):
    path = write_plan(tmp_path / "plan.yaml", cpt_lists, stages=("a", "b"))
    raw = yaml.safe_load(open(path))
    del raw["train_iters_per_stage"]
    raw["tokens_per_stage"] = 640  # / (2 samples x 16 tokens) = 20 iterations
    raw["stages"][1]["tokens"] = 320
    open(path, "w").write(yaml.safe_dump(raw, sort_keys=False))
    _, _, dry, _ = prepare(path)
    assert [d["plan"]["train_iters"] for d in dry.values()] == [20, 10]


def test_stage_start_flags_carry_the_stop_controls_and_the_load_mode(cpt_lists, tmp_path):
    from megatron.continual.runner import Checkpoint
    from megatron.continual.stages import build_stage_specs

    plan = load_plan(_wsd_plan(tmp_path, cpt_lists))
    runner = PlanRunner(plan, Launch(launcher="python"), time_limit_mins=30)
    specs = build_stage_specs(plan, (4, 4))
    dry = {"plan": {"tp": 1, "pp": 1, "dp": 1}, "deepspeed": {"zero_optimization": {"stage": 0}}}
    prev = Checkpoint(load_dir="/prev", tag="global_step4",
                      metadata={"iteration": 4, "plan": {"tp": 1, "pp": 1, "dp": 1}, "zero_stage": 0})
    flags, start, how = runner._start_flags(specs[1], dry, prev)
    assert flags["kill_switch_file"] == os.path.join(plan.root, "STOP")
    assert 29 < flags["exit_duration_in_mins"] < 30
    assert (flags["load"], flags.get("reset_data_state"), flags.get("finetune"), start) == ("/prev", True, None, 4)
    assert flags["train_iters"] == 8 and flags["lr_decay_iters"] == 8 and "universal_checkpoint" not in flags
    first, start, _ = runner._start_flags(specs[0], dry, None)
    assert "load" not in first and start == 0 and first["train_iters"] == 4


def test_shipped_demo_plan_is_valid(repo_root, monkeypatch):
    from megatron.continual.stages import check_methods

    monkeypatch.chdir(repo_root)
    plan = load_plan("ALCF/presets/cpt-demo.yaml")
    assert [s.key for s in plan.stages] == ["part", "plays", "code"]
    assert all(s.eval_data for s in plan.stages) and os.path.isfile(plan.prepare)
    assert [m.replay.ratio for m in check_methods(plan)] == [0.75] * 3


def test_a_stage_in_progress_is_not_resumed_under_another_definition(cpt_lists, tmp_path):
    from megatron.continual.markers import STARTED_FILE, config_hash, write_marker

    path = write_plan(tmp_path / "plan.yaml", cpt_lists, stages=("a", "b"))
    stage = tmp_path / "out" / "run" / "s1"
    (stage / "global_step2").mkdir(parents=True)
    (stage / "global_step2" / "run_metadata.json").write_text(json.dumps({"iteration": 2}))
    (stage / "latest").write_text("global_step2")
    old = {"flag.lr": 0.001}
    write_marker(str(stage), {"key": "s1", "config": old, "config_hash": config_hash(old)}, STARTED_FILE)
    with pytest.raises(ConfigError, match=r"stage 's1': started with another configuration.*flag.lr: 0.001 -> 0.003"):
        prepare(path)


def test_ewc_and_lwf_stages_need_a_stage_to_anchor_on(cpt_lists, tmp_path):
    method = {"lr": 3.0e-3, "min_lr": 3.0e-4, "warmup_iters": 1, "schedule": "cosine",
              "ewc": {"weight": 1.0e5, "num_iterations": 2}}
    path = write_plan(tmp_path / "plan.yaml", cpt_lists, stages=("a", "b"), method=method)
    with pytest.raises(PlanError, match=r"stage 's1': method.ewc.weight > 0 \(--ewc-weight\) anchors on the "
                                        r"stage before it, and the first stage has no init_checkpoint"):
        prepare(path)
    raw = yaml.safe_load(open(path))
    raw["method"] = {**method, "ewc": {}, "lwf": {"weight": 1.0, "kl": True}}
    open(path, "w").write(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(PlanError, match=r"stage 's1': method.lwf.weight > 0 \(--lwf-weight\)"):
        prepare(path)
    # From the second stage on they dry-run with the previous stage as --load (--finetune).
    raw["method"] = method
    raw["stages"][0]["method"] = {"ewc": {"weight": 0}}
    open(path, "w").write(yaml.safe_dump(raw, sort_keys=False))
    _, _, dry, _ = prepare(path)
    assert dry["s2"]["plan"]["train_iters"] == 4
    assert not any(os.path.isfile(os.path.join(d, "latest")) for d, _, _ in os.walk(tmp_path))
