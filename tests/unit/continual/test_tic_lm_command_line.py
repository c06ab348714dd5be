"""TiC-LM's continual_run.py command line (issue 29, item 6): every flag maps onto ours or is
refused naming what to use instead; --multi-node starts torchrun across nodes from NUM_NODES /
NODE_RANK / MASTER_ADDR."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from megatron.config import ConfigError, parse_args
from megatron.continual.plan import load_plan
from megatron.continual.stages import build_stage_specs
from tests.unit.continual.test_overrides import overrides
from tools.continual_run import check_multi_node, main


@pytest.fixture
def plan_file(tmp_path, cpt_lists):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"name": "tic", "stages": [{"key": "201401", "data": cpt_lists["a"]}],
                                    "train_iters_per_stage": 5, "method": {"lr": 1e-3, "replay": "none"}}))
    return str(path)


def test_trainer_knobs_become_trainer_flags_of_every_stage(plan_file):
    plan = load_plan(plan_file, overrides("--accum-freq", "4", "--wd", "0.05", "--grad-clip-norm", "0.5",
                                          "--seed", "7"))
    assert plan.args == {"gradient_accumulation_steps": 4, "weight_decay": 0.05, "clip_grad": 0.5, "seed": 7}
    flags = build_stage_specs(plan, (5,))[0].flags
    # The flags the stage's trainer will parse: ours, with these values.
    cfg = parse_args([f"--{k.replace('_', '-')}={v}" for k, v in plan.args.items()]).config
    assert (cfg.train.gradient_accumulation_steps, cfg.optim.weight_decay, cfg.optim.clip_grad, cfg.train.seed) \
        == (4, 0.05, 0.5, 7)
    assert {k: flags[k] for k in plan.args} == plan.args


@pytest.mark.parametrize(("flag", "value", "names"), [
    ("--config", "3b_2x.yaml", "use --plan PLAN.yaml"),
    ("--scale", "3b_2x", "use --plan PLAN.yaml"),
    ("--remote-sync", "s3://bucket/x", "no built-in S3 sync"),
])
def test_flags_without_a_counterpart_are_refused_naming_what_to_use(plan_file, capsys, flag, value, names):
    assert main(["--plan", plan_file, flag, value, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"continual_run.py: error: {flag}: not supported: ") and names in err


@pytest.mark.parametrize("flag", ["--try-balanced-manifest", "--suffixes"])
def test_data_manifest_flags_given_to_the_trainer_say_where_they_are_supported(flag):
    with pytest.raises(ConfigError, match=rf"^{flag}: not supported: .*tools/continual_run\.py"):
        parse_args([flag])


def test_multi_node_needs_the_node_variables():
    with pytest.raises(ConfigError, match=r"--multi-node: set NUM_NODES and MASTER_ADDR"):
        check_multi_node("train_alcf", {})
    with pytest.raises(ConfigError, match=r"--multi-node: needs the train_alcf launcher"):
        check_multi_node("python", {"NUM_NODES": "2", "MASTER_ADDR": "n0"})
    check_multi_node("train_alcf", {"NUM_NODES": "2", "MASTER_ADDR": "n0"})
    check_multi_node(None, {"PBS_NODEFILE": "/var/spool/nodes"})


def test_launcher_starts_torchrun_across_nodes(repo_root, tmp_path):
    dropped = ("PBS_NODEFILE", "SLURM_JOB_NODELIST", "MASTER_ADDR", "DATA_FILE_LIST")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(PYTHON_EXEC=sys.executable, DRY_RUN="1", NPROC="2", NUM_NODES="2", NODE_RANK="1",
               MASTER_ADDR="10.0.0.1", MASTER_PORT="29511")
    out = subprocess.run(["bash", "train_alcf.sh", "--mock-data", "--train-iters", "2", "--num-layers", "2",
                          "--hidden-size", "16", "--num-attention-heads", "2", "--vocab-size", "64",
                          "--seq-length", "16", "--micro-batch-size", "1"],
                         cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert "topology: nodes, 2 node(s) x 2 rank(s) = world size 4, master 10.0.0.1:29511" in out.stdout
    assert ("-m torch.distributed.run --nnodes 2 --node-rank 1 --nproc-per-node 2 --master-addr 10.0.0.1 "
            "--master-port 29511") in out.stdout
    bad = subprocess.run(["bash", "train_alcf.sh", "--mock-data"], cwd=repo_root, capture_output=True, text=True,
                         env={**env, "MASTER_ADDR": ""}, timeout=120)
    assert bad.returncode == 2 and "NUM_NODES=2: set MASTER_ADDR" in bad.stderr
