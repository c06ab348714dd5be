"""train_alcf.sh: environment variables become flags, conflicts and bad values stop before launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def launch(repo_root, tmp_path, *args: str, prefix: str = "missing", **env: str):
    dropped = ("DATA_FILE_LIST", "LR", "SP", "SEQUENCE_PARALLEL", "TP", "PBS_NODEFILE", "SLURM_JOB_NODELIST", "MASTER_ADDR")
    clean = {k: v for k, v in os.environ.items() if k not in dropped}
    data_list = tmp_path / "list.txt"
    data_list.write_text(f"# one corpus\n1.0 {prefix} plays\n")
    env = {k: v.replace("{list}", str(data_list)) for k, v in env.items()}
    return subprocess.run(
        ["bash", "train_alcf.sh", *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
        # NPROC="" unsets the local process count (scheduler runs take theirs from the job).
        env={k: v for k, v in {**clean, "PYTHON_EXEC": sys.executable, "DRY_RUN": "1", "NPROC": "2", **env}.items()
             if v or k != "NPROC"},
    )


def plan_of(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])


def test_variables_become_flags_of_the_resolved_plan(repo_root, tmp_path, shakespeare_prefix):
    out = launch(
        repo_root, tmp_path, "--global-batch-size", "64", prefix=shakespeare_prefix,
        DATA_FILE_LIST="{list}", LR="3e-4", TP="2", MICRO_BATCH="4", TRAIN_TOKENS="65536",
        SEQ_LEN="128", NLAYERS="2", HIDDEN="64", HEADS="4", TOKENIZER_TYPE="byte",
    )
    assert out.returncode == 0, out.stderr
    assert "LR=3e-4 -> --lr" in out.stdout
    plan = plan_of(out.stdout.split("[train_alcf.sh] command:")[1])["plan"]
    assert (plan["tp"], plan["dp"], plan["world_size"]) == (2, 1, 2)
    # 65536 tokens / (64 samples x 128 tokens) = 8 steps; 64 / (4 x dp 1) = 16 accumulation steps.
    assert plan["train_iters"] == 8
    assert plan["grad_accum_steps"] == 16
    paths = plan_of(out.stdout.split("[train_alcf.sh] command:")[1])["paths"]
    name = "ws2_ds_stage0_nl2_hs64_mb4_seq128_gb64_sp0_pp1_tp2_fp32_optadamw_lr0.0003"
    assert paths == {"save": f"checkpoints/{name}", "tensorboard_dir": f"outputs/{name}/tensorboard"}


def test_sp_is_the_ulysses_degree_as_in_the_fork(repo_root, tmp_path, shakespeare_prefix):
    out = launch(
        repo_root, tmp_path, prefix=shakespeare_prefix, DATA_FILE_LIST="{list}", SP="2", TRAIN_ITERS="2",
        SEQ_LEN="128", NLAYERS="2", HIDDEN="64", HEADS="4", TOKENIZER_TYPE="byte", SEQUENCE_PARALLEL="0",
    )
    assert out.returncode == 0, out.stderr
    assert "SP=2 -> --ds-sequence-parallel-size" in out.stdout
    plan = plan_of(out.stdout.split("[train_alcf.sh] command:")[1])["plan"]
    assert (plan["sp"], plan["dp"], plan["world_size"]) == (2, 1, 2)


def test_missing_data_prefix_stops_before_launch(repo_root, tmp_path):
    out = launch(repo_root, tmp_path, DATA_FILE_LIST="{list}", TRAIN_ITERS="10")
    assert out.returncode == 2
    assert "list.txt:2: dataset prefix 'missing' is missing missing.bin, missing.idx" in out.stderr
    assert "tools/preprocess_data.py" in out.stderr


def test_variable_and_flag_that_disagree_are_an_error(repo_root, tmp_path):
    out = launch(repo_root, tmp_path, "--lr", "2e-3", DATA_FILE_LIST="{list}", LR="1e-3")
    assert out.returncode == 2
    assert "--lr: given twice with different values" in out.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SEQUENCE_PARALLEL": "maybe"}, "SEQUENCE_PARALLEL=maybe: expected 1/0"),
        ({"DTYPE": "fp8"}, "DTYPE=fp8: expected bf16, fp16 or fp32"),
        ({"LR": ""}, "LR is set but empty"),
    ],
)
def test_bad_variable_values_name_the_variable(repo_root, tmp_path, env, message):
    out = launch(repo_root, tmp_path, DATA_FILE_LIST="{list}", **env)
    assert out.returncode == 2
    assert message in out.stderr


def test_fake_pbs_job_launches_mpiexec_over_the_nodefile(repo_root, tmp_path, shakespeare_prefix):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("".join(f"x{h}.cluster\n" for h in range(4) for _ in range(4)))  # 4 hosts x 4 slots
    out = launch(repo_root, tmp_path, prefix=shakespeare_prefix, DATA_FILE_LIST="{list}", TRAIN_ITERS="10",
                 PBS_NODEFILE=str(nodefile), PBS_JOBID="123.pbs", NGPU_PER_HOST="4", NPROC="")
    assert out.returncode == 0, out.stderr
    assert "topology: pbs, 4 node(s) x 4 rank(s) = world size 16, master x0.cluster:29500" in out.stdout
    assert f"command: mpiexec --envall -n 16 -ppn 4 --hostfile {nodefile}" in out.stdout
    assert plan_of(out.stdout.split("[train_alcf.sh] command:")[1])["plan"]["world_size"] == 16


def test_fake_slurm_job_launches_srun(repo_root, tmp_path, shakespeare_prefix):
    out = launch(repo_root, tmp_path, prefix=shakespeare_prefix, DATA_FILE_LIST="{list}", TRAIN_ITERS="10",
                 SLURM_JOB_NODELIST="nid[0012-0014,0020]", SLURM_NNODES="4", SLURM_GPUS_ON_NODE="2", NPROC="")
    assert out.returncode == 0, out.stderr
    assert "topology: slurm, 4 node(s) x 2 rank(s) = world size 8, master nid0012:29500" in out.stdout
    assert "command: srun --nodes 4 --ntasks 8 --ntasks-per-node 2" in out.stdout
    assert plan_of(out.stdout.split("[train_alcf.sh] command:")[1])["plan"]["world_size"] == 8


def test_model_arch_presets_and_unknown_names(repo_root, tmp_path, shakespeare_prefix):
    out = launch(repo_root, tmp_path, prefix=shakespeare_prefix, DATA_FILE_LIST="{list}", MODEL_ARCH="7B",
                 NLAYERS="2", TRAIN_ITERS="10")
    assert out.returncode == 0, out.stderr
    assert "MODEL_ARCH=7B -> --config" in out.stdout
    plan = plan_of(out.stdout.split("[train_alcf.sh] command:")[1])["plan"]
    # The preset's shape, with the variable's layer count winning (it becomes a flag).
    d, f, vocab = 4096, 11008, plan["padded_vocab_size"]
    assert plan["num_parameters"] == 2 * (4 * d * d + 3 * d * f + 2 * d) + d + 2 * vocab * d
    bad = launch(repo_root, tmp_path, prefix=shakespeare_prefix, DATA_FILE_LIST="{list}", MODEL_ARCH="1B")
    assert bad.returncode == 2
    assert "MODEL_ARCH=1B: unknown preset; known: 425M 7B" in bad.stderr


def test_layered_presets_keep_every_file_and_show_where_values_came_from(repo_root, tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("num_layers: 3\n")
    out = launch(repo_root, tmp_path, "--config", str(user), "--mock-data", MODEL_ARCH="7B", TRAIN_ITERS="10")
    assert out.returncode == 0, out.stderr
    result = plan_of(out.stdout.split("[train_alcf.sh] command:")[1])
    plan, sources = result["plan"], result["sources"]
    # The 7B shape (hidden 4096, ffn 11008, untied head, seq 4096) with the user's 3 layers: ~0.6B.
    d, f, vocab = 4096, 11008, plan["padded_vocab_size"]
    assert plan["num_parameters"] == 3 * (4 * d * d + 3 * d * f + 2 * d) + d + 2 * vocab * d
    assert 0.55e9 < plan["num_parameters"] < 0.65e9
    assert plan["seq_length"] == 4096
    assert sources["--num-layers"] == {"value": 3, "source": f"{user}:1"}
    assert sources["--hidden-size"]["source"].endswith("ALCF/presets/arch/7B.yaml:4")
    assert sources["--train-iters"] == {"value": 10, "source": "TRAIN_ITERS"}
    assert sources["--save"] == {"value": "auto", "source": "train_alcf.sh default"}
    # A relaunch of the same command resumes from its own save directory (and a finished run says
    # so), rather than training from scratch into a directory whose checkpoints are never rewritten.
    assert sources["--load"] == {"value": "auto", "source": "train_alcf.sh default"}
    assert "--data-file-list" not in sources  # the demo's list is not inherited


def test_a_preset_without_data_says_what_is_missing(repo_root, tmp_path):
    out = launch(repo_root, tmp_path, MODEL_ARCH="425M", TRAIN_ITERS="10")
    assert out.returncode == 2
    assert "--data-file-list: no training data" in out.stderr
    assert "the demo preset applies only to the no-argument demo" in out.stderr


def test_save_in_a_file_is_not_replaced_by_the_launcher_default(repo_root, tmp_path, shakespeare_prefix):
    user = tmp_path / "user.yaml"
    user.write_text(f"save: {tmp_path}/mine\nnum_layers: 2\nhidden_size: 64\nnum_attention_heads: 4\n")
    out = launch(repo_root, tmp_path, "--config", str(user), prefix=shakespeare_prefix,
                 DATA_FILE_LIST="{list}", TRAIN_ITERS="10")
    assert out.returncode == 0, out.stderr
    paths = plan_of(out.stdout.split("[train_alcf.sh] command:")[1])["paths"]
    assert paths["save"] == f"{tmp_path}/mine"


def test_every_launcher_variable_maps_to_a_real_flag(repo_root):
    from megatron.config.schema import knob_by_flag

    text = open(os.path.join(repo_root, "ALCF", "helpers.sh")).read()
    entries = []
    for table in ("ENV_VALUE_FLAGS", "ENV_SWITCH_FLAGS"):
        body = text.split(f"{table}=(", 1)[1].split("\n)", 1)[0]
        entries += [line.strip().strip('"') for line in body.splitlines() if "|" in line]
    assert len(entries) > 40
    from megatron.config.compat import COMPAT

    # Our knobs, or Megatron flags the compatibility registry maps (never one it refuses).
    known = set(knob_by_flag()) | {f for f, e in COMPAT.items() if e.status != "refused"}
    unknown = [e for e in entries if e.split("|")[1] not in known]
    assert unknown == []


def test_objective_variable_selects_masked_diffusion(repo_root, tmp_path, shakespeare_prefix):
    out = launch(repo_root, tmp_path, prefix=shakespeare_prefix, DATA_FILE_LIST="{list}", TRAIN_ITERS="4",
                 OBJECTIVE="mdm", NUM_MC="4", NLAYERS="2", HIDDEN="64", HEADS="4", NPROC="1")
    assert out.returncode == 0, out.stderr
    assert "OBJECTIVE=mdm -> --objective" in out.stdout
    printed = plan_of(out.stdout.split("[train_alcf.sh] command:")[1])
    assert printed["plan"]["objective"] == "mdm"
    assert printed["plan"]["attention_flops"].startswith("full (non-causal)")
    assert printed["paths"]["save"].endswith("_mdm")  # never the AR run's auto directory


def test_fused_ce_variables_select_the_fused_loss(repo_root, tmp_path, shakespeare_prefix):
    out = launch(repo_root, tmp_path, prefix=shakespeare_prefix, DATA_FILE_LIST="{list}", TRAIN_ITERS="4",
                 FUSED_CE="1", FUSED_CE_CHUNK_TOKENS="1024", NLAYERS="2", HIDDEN="64", HEADS="4", NPROC="1")
    assert out.returncode == 0, out.stderr
    assert "FUSED_CE=1 -> --fused-linear-cross-entropy" in out.stdout
    assert "FUSED_CE_CHUNK_TOKENS=1024 -> --fused-ce-chunk-tokens" in out.stdout
    printed = plan_of(out.stdout.split("[train_alcf.sh] command:")[1])
    assert printed["sources"]["--fused-linear-cross-entropy"]["value"] is True
    assert printed["sources"]["--fused-ce-chunk-tokens"]["value"] == 1024


def test_two_spellings_of_one_variable_name_each_with_its_own_value(repo_root, tmp_path):
    # Issue 29 item 7: the error used to say "0.01 from LR_WARMUP_FRAC and 0.0 from --lr-warmup-fraction".
    out = launch(repo_root, tmp_path, DATA_FILE_LIST="{list}", LR_WARMUP_FRAC="0.0", LR_WARMUP_FRACTION="0.01")
    assert out.returncode == 2
    assert ("LR_WARMUP_FRACTION=0.01 and LR_WARMUP_FRAC=0.0 both set --lr-warmup-fraction with different "
            "values; unset one") in out.stderr
    same = launch(repo_root, tmp_path, "--lr-warmup-fraction", "0.5", DATA_FILE_LIST="{list}",
                  LR_WARMUP_FRAC="0.01", LR_WARMUP_FRACTION="0.01")
    assert same.returncode == 2
    assert "(0.01 from LR_WARMUP_FRACTION and 0.5 from --lr-warmup-fraction)" in same.stderr


def test_skip_train_variable_evaluates_only(repo_root, tmp_path, shakespeare_prefix):
    out = launch(repo_root, tmp_path, prefix=shakespeare_prefix, DATA_FILE_LIST="{list}", SKIP_TRAIN="1",
                 LOAD=str(tmp_path / "ckpt"), NLAYERS="2", HIDDEN="64", HEADS="4", NPROC="1")
    assert out.returncode == 0, out.stderr
    assert "SKIP_TRAIN=1 -> --skip-train" in out.stdout
    printed = plan_of(out.stdout.split("[train_alcf.sh] command:")[1])
    assert printed["plan"]["train_iters"] == 0  # no run length needed
