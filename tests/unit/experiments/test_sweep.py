"""tools/sweep.py: grids over config keys, bad input refused before any run, job arrays for PBS
and Slurm (run under the fake schedulers of the launcher tests), and a real 2 x 2 sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from megatron.config.fields import ConfigError
from megatron.experiments.grid import expand, parse_axes, run_name
from megatron.experiments.results import read_csv
from tools import sweep as sweep_tool

DEMO = "ALCF/presets/demo.yaml"


def test_grid_expands_to_named_runs_in_order():
    runs = expand(parse_axes(["lr=1e-4,3e-4", "--adam-beta2=0.95,0.99"]))
    assert [r.name for r in runs] == ["lr-0.0001__adam_beta2-0.95", "lr-0.0001__adam_beta2-0.99",
                                      "lr-0.0003__adam_beta2-0.95", "lr-0.0003__adam_beta2-0.99"]
    assert runs[1].flags == ("--lr", "0.0001", "--adam-beta2", "0.99")
    assert run_name({"swiglu": False, "hidden_size": 64}) == "swiglu-false__hidden_size-64"
    picked = expand(parse_axes(["lr=1,2,3,4,5", "seed=1,2"]), random_count=3, seed=7)
    assert len(picked) == 3 and picked == expand(parse_axes(["lr=1,2,3,4,5", "seed=1,2"]), random_count=3, seed=7)
    assert len({r.name for r in picked}) == 3


@pytest.mark.parametrize(("grid", "message"), [
    (["learning_rate=1e-3"], "--grid 'learning_rate=1e-3': unknown config key 'learning_rate'"),
    (["lr="], "no values for lr"),
    (["lr"], "expected KEY=V1,V2"),
    (["hidden_size=64,wide"], "--hidden-size: invalid int value 'wide'"),
    (["lr=1e-3,0.001"], "a value is repeated"),
    (["lr=1e-3", "lr=3e-3"], "lr is already swept"),
    ([], "give at least one axis"),
])
def test_bad_grids_are_refused(grid, message):
    with pytest.raises(ConfigError, match=None) as e:
        expand(parse_axes(grid))
    assert message in str(e.value)


@pytest.fixture
def no_runs(monkeypatch):
    """Fail the test if any run process would start."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a run started: {args}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--grid", "lr=1e-3,foo"], {}, "--lr: invalid float value 'foo'"),
    (["--grid", "nope=1"], {}, "unknown config key 'nope'"),
    (["--grid", "lr=1e-3", "--random", "5"], {}, "--random: 5 is not in 1..1"),
    (["--grid", "lr=1e-3,3e-3"], {"LR": "2e-3"}, "LR=2e-3: sets --lr, which is a swept key"),
    (["--grid", "lr=1e-3"], {"SAVE": "/tmp/x"}, "SAVE=/tmp/x: sets --save"),
    (["--grid", "num_attention_heads=4,5"], {}, "run num_attention_heads-5:"),
])
def test_bad_input_is_refused_before_any_run(tmp_path, monkeypatch, capsys, no_runs, argv, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert sweep_tool.main(["--base", DEMO, "--output-dir", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "demo-lr" / "runs").exists()


def test_a_run_directory_made_for_other_flags_is_refused(tmp_path, monkeypatch, capsys, no_runs):
    base = ["--base", DEMO, "--output-dir", str(tmp_path), "--name", "s", "--dry-run"]
    assert sweep_tool.main([*base, "--grid", "lr=1e-3"]) == 0
    other = tmp_path / "other.yaml"
    other.write_text(open(DEMO).read().replace("adam_beta2: 0.95", "adam_beta2: 0.9"))
    assert sweep_tool.main([*base[:1], str(other), *base[2:], "--grid", "lr=1e-3"]) == 2
    assert "was made with another configuration" in capsys.readouterr().err


def _fake_scheduler_bin(tmp_path, name):
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / name).write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/{name}.args\n')
    (fake / name).chmod(0o755)
    return fake


@pytest.mark.parametrize("scheduler", ["pbs", "slurm"])
def test_job_array_runs_each_task_through_the_launcher(tmp_path, monkeypatch, capsys, scheduler):
    submitter = "qsub" if scheduler == "pbs" else "sbatch"
    fake = _fake_scheduler_bin(tmp_path, submitter)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setenv("MICRO_BATCH", "8")  # a launcher variable: exported to every task
    argv = ["--base", DEMO, "--grid", "lr=1e-3,3e-3", "--grid", "seed=1,2", "--output-dir", str(tmp_path),
            "--name", "arr", "--scheduler", scheduler, "--walltime", "01:00:00", "--parallel", "2", "--submit"]
    assert sweep_tool.main(argv) == 0
    assert not list((tmp_path / "arr" / "runs").glob("*/train.log"))  # submitted, not run here
    script = tmp_path / "arr" / f"arr.{scheduler}.sh"
    assert (tmp_path / f"{submitter}.args").read_text().strip() == str(script)
    text = script.read_text()
    assert ("#PBS -J 0-3" if scheduler == "pbs" else "#SBATCH --array=0-3%2") in text
    assert "export MICRO_BATCH=8" in text and "export EXIT_DURATION_MINS=50" in text
    # Task 2 under a fake 2-node scheduler allocation: the launcher's dry run shows run 2's flags.
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x0\nx0\nx1\nx1\n")
    job_env = ({"PBS_ARRAY_INDEX": "2", "PBS_NODEFILE": str(nodefile), "PBS_JOBID": "1[2].pbs"}
               if scheduler == "pbs" else
               {"SLURM_ARRAY_TASK_ID": "2", "SLURM_JOB_NODELIST": "nid[0001-0002]", "SLURM_NNODES": "2"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PBS_", "SLURM_")) and k != "NPROC"}
    out = subprocess.run(["bash", str(script)], env={**env, **job_env, "DRY_RUN": "1", "PYTHON_EXEC": sys.executable,
                                                     "NGPU_PER_HOST": "2"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    command = out.stdout.split("[train_alcf.sh] command:")[1].splitlines()[0]
    run_dir = tmp_path / "arr" / "runs" / "lr-0.003__seed-1"
    assert f"--lr 0.003 --seed 1 --save {run_dir}/checkpoints --load {run_dir}/checkpoints" in command
    assert ("mpiexec" if scheduler == "pbs" else "srun") in command
    plan = json.loads(out.stdout[out.stdout.index("{", out.stdout.index("command:")):])
    assert plan["plan"]["world_size"] == 4 and plan["plan"]["micro_batch_size"] == 8
    bad = subprocess.run(["bash", str(script)], env={**env, "PBS_ARRAY_INDEX": "9", "DRY_RUN": "1"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no run for array index 9" in bad.stderr


TINY = {"TRAIN_ITERS": "3", "LR_WARMUP_ITERS": "1", "EVAL_ITERS": "1", "NLAYERS": "1", "HIDDEN": "32",
        "HEADS": "2", "MICRO_BATCH": "2", "SEQ_LEN": "32", "LOG_INTERVAL": "1"}


@pytest.mark.slow
def test_two_by_two_sweep_runs_skips_finished_runs_and_resumes_interrupted_ones(tmp_path, monkeypatch, capsys):
    for k, v in TINY.items():
        monkeypatch.setenv(k, v)
    argv = ["--base", DEMO, "--grid", "lr=1e-3,3e-3", "--grid", "adam_beta2=0.95,0.99",
            "--output-dir", str(tmp_path), "--name", "g"]
    assert sweep_tool.main(argv) == 0
    root = tmp_path / "g"
    rows = read_csv(str(root / "sweep.csv"))
    assert len(rows) == 4 and {r["state"] for r in rows} == {"done"}
    for row in rows:  # the CSV is the runs' own records
        record = json.loads((root / "runs" / row["run"] / "checkpoints" / "run_result.json").read_text())
        for column in ("best_valid_loss", "final_valid_loss", "tokens", "num_parameters", "flops", "wall_seconds"):
            assert row[column] == record[column], column
        assert record["finished"] and record["iteration"] == 3 and record["tokens"] == 3 * 2 * 32
    assert "| 1 |" in capsys.readouterr().out
    # Rerun: every run is finished, nothing starts.
    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or real_popen(*a, **k))
    assert sweep_tool.main(argv) == 0 and started == []
    # An interrupted run (checkpoint, no finished result) resumes from its checkpoint alone.
    victim = root / "runs" / rows[2]["run"] / "checkpoints" / "run_result.json"
    before = json.loads(victim.read_text())
    victim.unlink()
    assert sweep_tool.main(argv) == 0 and len(started) == 1
    after = json.loads(victim.read_text())
    assert after["iteration"] == 3 and after["final_valid_loss"] == before["final_valid_loss"]
