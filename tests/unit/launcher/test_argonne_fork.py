"""The argonne fork's spellings (issue 29, item 5): every variable its ALCF/helpers.sh reads is mapped
onto a flag of the resolved plan or refused naming itself; its own flags map or are documented
no-ops; bf16 is the default on a bf16 accelerator, with the launcher named as its source."""

from __future__ import annotations

import os
import stat

import pytest

from megatron.config import ConfigError, parse_args
from tests.unit.launcher.test_train_alcf import launch, plan_of

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--use-flash-attn", "--split", "--data-file-list", "--train-iters", "--bf16",
    "--fp16", "--accumulate-allreduce-grads-in-fp32", "--optimizer", "--zero-stage", "--deepspeed-config",
    "--distributed-backend", "--override-opt-param-scheduler")

# Variable -> (value, flag of the printed plan's sources, value there). One DRY_RUN launch each.
MAPPED = {
    "OPTIMIZER": ("muon", "--optimizer", "muon"),
    "OPTIM": ("lion", "--optimizer", "lion"),
    "TRAIN_ITER": ("6", "--train-iters", 6),
    "DS_CONFIG": ("{ds}", "--deepspeed-config", "{ds}"),
    "BE": ("gloo", "--distributed-backend", "gloo"),
    "CCL": ("gloo", "--distributed-backend", "gloo"),
    "NCCL": ("gloo", "--distributed-backend", "gloo"),
    "OVERRIDE_CKPT_OPT_PARAM": ("1", "--override-opt-param-scheduler", True),
    "NO_FLASH_ATTN": ("1", "--use-flash-attn", False),
    "TRAIN_SPLIT": ("90", "--split", "90,10,0"),
    "VAL_SPLIT": ("5", "--split", "990,5,0"),
    "TEST_SPLIT": ("2", "--split", "990,10,2"),
    "DATA_PATH": ("{prefix}", "--data-file-list", "inline:1 {prefix} {name}"),
}
REFUSED = ("NO_LLAMA", "ZERO_HPZ_PARTITION_SIZE", "MICS_SHARD_SIZE", "COMMS_LOGGER",
           "CKPT_DIR", "HOSTFILE", "LAUNCH_WITH", "LAUNCH_CMD", "EXEC", "GPUS_PER_NODE", "DATA_PARENT")
# Read by the fork and mapped by the existing table (tests/unit/launcher/test_train_alcf.py), or by
# the topology (NGPU_PER_HOST); SP is the fork's Ulysses degree, --ds-sequence-parallel-size here too.
ALREADY = ("SP", "MICRO_BATCH", "NLAYERS", "DTYPE", "TP", "PP", "GRAD_ACC_STEPS", "ZERO_STAGE", "TOKENIZER_TYPE",
           "GLOBAL_BATCH", "USE_ACTIVATION_CHECKPOINTING", "OPT", "DATA_FILE_LIST", "HIDDEN", "TRAIN_TOKENS",
           "TRAIN_ITERS", "TOKENIZER_MODEL", "SEQ", "LR_DECAY_ITERS", "LR", "MODEL_ARCH", "LR_WARMUP_FRAC",
           "HEADS", "ADAM_EPS", "WEIGHT_DECAY", "NUM_KV_HEAD", "FFN_HIDDEN_SIZE", "DATA_CACHE_PATH", "ADAM_BETA2",
           "ADAM_BETA1", "TBDIR", "SAVE_INTERVAL", "LR_DECAY_STYLE", "CPU_OPTIMIZER", "CLIP_GRAD", "ROPE_THETA",
           "LOG_INTERVAL", "LOAD", "SAVE", "INIT_METHOD_STD", "EVAL_ITERS", "EVAL_INTERVAL", "NGPU_PER_HOST")
TINY = {"NLAYERS": "2", "HIDDEN": "32", "HEADS": "2", "TRAIN_ITERS": "4", "NPROC": "1", "TOKENIZER_TYPE": "byte"}


def run(repo_root, tmp_path, shakespeare_prefix, *args, **env):
    return launch(repo_root, tmp_path, *args, prefix=shakespeare_prefix, **{"DATA_FILE_LIST": "{list}", **TINY, **env})


def test_every_variable_of_the_fork_is_handled(repo_root):
    text = open(os.path.join(repo_root, "ALCF", "helpers.sh")).read()
    handled = [v for v in (*MAPPED, *REFUSED, "DEBUG", "NO_TENSORBOARD", "VOCAB_FILE", "MERGE_FILE",
                           "TIMING_LOG_LEVEL") if f'"{v}|' in text or f"${{{v}:-" in text]
    assert sorted(handled) == sorted({*MAPPED, *REFUSED, "DEBUG", "NO_TENSORBOARD", "VOCAB_FILE", "MERGE_FILE",
                                      "TIMING_LOG_LEVEL"})
    assert [v for v in ALREADY if f'"{v}|' not in text and f"${{{v}" not in text
            and v not in ("MODEL_ARCH", "DTYPE", "NGPU_PER_HOST")] == []


# Two launches cover every mapped variable (values that would disagree go to different launches).
GROUPS = (("OPTIMIZER", "TRAIN_ITER", "DS_CONFIG", "BE", "OVERRIDE_CKPT_OPT_PARAM", "NO_FLASH_ATTN", "TRAIN_SPLIT",
           "VAL_SPLIT"), ("OPTIM", "CCL", "NCCL", "TEST_SPLIT", "DATA_PATH"))


@pytest.mark.parametrize("group", GROUPS, ids=["a", "b"])
def test_fork_variables_are_mapped_onto_the_plan(repo_root, tmp_path, shakespeare_prefix, group):
    ds = tmp_path / "ds.json"
    ds.write_text('{"train_micro_batch_size_per_gpu": 1}')
    fill = {"{ds}": str(ds), "{prefix}": shakespeare_prefix, "{name}": os.path.basename(shakespeare_prefix)}

    def filled(x):
        for k, v in fill.items():
            x = x.replace(k, v) if isinstance(x, str) else x
        return x

    first = "OPTIMIZER" in group
    env = {**TINY, "DATA_FILE_LIST": "{list}", **{name: filled(MAPPED[name][0]) for name in group}}
    if "TRAIN_ITER" in group:
        del env["TRAIN_ITERS"]
    if "DATA_PATH" in group:
        del env["DATA_FILE_LIST"]
    if first:  # the launcher-only extras ride along
        env.update(DEBUG="1", NO_TENSORBOARD="1", TIMING_LOG_LEVEL="2")
    out = launch(repo_root, tmp_path, prefix=shakespeare_prefix, **env)
    assert out.returncode == 0, out.stderr
    printed = plan_of(out.stdout.split("[train_alcf.sh] command:")[1])
    split = "90,5,0" if first else "990,10,2"
    for name in group:
        value, flag, expected = MAPPED[name]
        assert printed["sources"][flag]["value"] == (split if flag == "--split" else filled(expected)), name
        assert f"{name}={filled(value)} -> " in out.stdout or name.endswith("SPLIT")
    if first:
        assert "DEBUG=1 -> nothing (" in out.stdout and "NO_TENSORBOARD=1 -> no TensorBoard" in out.stdout
        assert printed["paths"]["tensorboard_dir"] is None
        assert "TIMING_LOG_LEVEL=2 -> --timing-log-level" in out.stdout


def test_fork_variables_without_a_counterpart_are_refused_naming_themselves(repo_root):
    import subprocess

    script = 'source ALCF/helpers.sh; for v in "$@"; do (export "$v=7"; env_to_flags) 2>&1; done'
    env = {k: v for k, v in os.environ.items() if k not in REFUSED}
    out = subprocess.run(["bash", "-c", script, "bash", *REFUSED], cwd=repo_root, env=env, capture_output=True,
                         text=True, timeout=60).stdout
    assert [line.split(": not supported: ")[0] for line in out.splitlines()] == [
        f"train_alcf.sh: error: {v}=7" for v in REFUSED]


def fake_gpu(tmp_path, capability: str) -> str:
    """A directory with an ``nvidia-smi`` that reports one GPU of ``capability``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    tool = bin_dir / "nvidia-smi"
    tool.write_text(f'#!/bin/sh\ncase "$*" in *compute_cap*) echo {capability};; *) echo "GPU 0: Fake (UUID: x)";; esac\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_bf16_is_the_launcher_default_on_a_bf16_gpu(repo_root, tmp_path, shakespeare_prefix):
    def sources(capability, *args):
        path = fake_gpu(tmp_path / capability / str(len(args)), capability)
        out = run(repo_root, tmp_path, shakespeare_prefix, *args, PATH=path, DS_ACCELERATOR="cpu")
        assert out.returncode == 0, out.stderr
        return plan_of(out.stdout.split("[train_alcf.sh] command:")[1])["sources"]

    assert sources("9.0")["--bf16"] == {"value": True, "source": "train_alcf.sh default"}
    assert "--bf16" not in sources("7.0")  # a V100 has no bf16
    assert "--bf16" not in sources("9.0", "--fp16")  # the default yields to --fp16


@pytest.mark.parametrize(("theirs", "ours"), [
    (["--use-flash-attn-builder"], ("model", "use_flash_attn", True)),
    (["--rotary-position-embeddings-theta", "50000"], ("model", "rotary_base", 50000.0)),
    (["--accumulate-allreduce-grads-in-fp32", "--bf16"], ("train", "accumulate_allreduce_grads_in_fp32", True)),
])
def test_fork_flags_map_onto_ours(theirs, ours):
    section, field, value = ours
    assert getattr(getattr(parse_args(theirs).config, section), field) == value


def test_fp32_gradient_accumulation_under_bf16_is_deepspeeds_grad_accum_dtype():
    from tests.helpers import tiny_plan

    plan = tiny_plan("--bf16", "--accumulate-allreduce-grads-in-fp32", "--train-iters", "2", "--zero-stage", "1",
                     "--gradient-accumulation-steps", "2")
    assert plan.deepspeed["data_types"] == {"grad_accum_dtype": "fp32"}
    assert "data_types" not in tiny_plan("--bf16", "--train-iters", "2").deepspeed
    with pytest.raises(ConfigError, match=r"--accumulate-allreduce-grads-in-fp32: .* only at --zero-stage 1"):
        tiny_plan("--bf16", "--accumulate-allreduce-grads-in-fp32", "--train-iters", "2", "--zero-stage", "0")


@pytest.mark.slow
def test_fp32_gradient_accumulation_under_bf16_trains():
    from megatron.config import DistEnv
    from megatron.trainer.loop import train
    from tests.helpers import tiny_plan

    plan = tiny_plan("--bf16", "--accumulate-allreduce-grads-in-fp32", "--train-iters", "2", "--zero-stage", "1",
                     "--gradient-accumulation-steps", "2")
    assert len(train(plan, DistEnv()).losses) == 2
