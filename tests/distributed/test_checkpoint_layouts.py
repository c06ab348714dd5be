"""Checkpoints across layouts, at 2 processes (gloo):

- exact resume: stopped at step 2 and resumed, ZeRO 0-3 / TP=2 / PP=2 reproduce the
  uninterrupted run's losses bit for bit;
- universal: saved at TP=2, PP=2, ZeRO-1 DP=2 or ZeRO-3 DP=2, converted, loaded at TP=1 (one
  process) or at TP=2 / DP=2: validation loss and the next steps match the uninterrupted run;
- DeepSpeed's own ``ds_to_universal`` on our checkpoint writes the same tensors as our tool;
- a layout change without --universal-checkpoint is refused with the conversion command.

Tolerances: a resumed run on the same layout is exact. Across layouts the full weights are the
same, so the only differences are summation orders in split matmuls and all-reduces (rel 1e-5).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from megatron.checkpointing.checkpoint import CheckpointError
from megatron.checkpointing.convert import convert
from megatron.checkpointing.universal import UniversalCheckpoint
from megatron.config import ConfigError, DistEnv
from megatron.trainer.loop import train
from tests.helpers import assert_resume_is_bit_exact, run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed

LLAMA = ["--swiglu", "--num-key-value-heads", "2", "--untie-embeddings-and-output-weights",
         "--normalization", "rmsnorm", "--lr", "1e-2"]
# Global batch 4 everywhere: 2 processes at DP=2 x micro 2, or TP/PP=2 with accumulation.
LAYOUTS = {
    "zero0-dp2": ["--zero-stage", "0", "--micro-batch-size", "2"],
    "zero1-dp2": ["--zero-stage", "1", "--micro-batch-size", "2"],
    "zero2-dp2": ["--zero-stage", "2", "--micro-batch-size", "2"],
    "zero3-dp2": ["--zero-stage", "3", "--micro-batch-size", "2"],
    "tp2": ["--tensor-model-parallel-size", "2", "--micro-batch-size", "2", "--gradient-accumulation-steps", "2"],
    "pp2": ["--pipeline-model-parallel-size", "2", "--micro-batch-size", "2", "--gradient-accumulation-steps", "2"],
    "tp2-zero1": ["--tensor-model-parallel-size", "2", "--zero-stage", "1", "--micro-batch-size", "2",
                  "--gradient-accumulation-steps", "2"],
}
SINGLE = ["--micro-batch-size", "4"]


def _run(env: DistEnv, flags: list[str]) -> tuple[tuple[float, ...], float | None]:
    result = train(tiny_plan(*LLAMA, *flags, env=env), env)
    return result.losses, result.valid_loss


@pytest.mark.parametrize("layout", ["zero0-dp2", "zero1-dp2", "zero2-dp2", "zero3-dp2", "tp2", "pp2"])
def test_resume_is_bit_exact_at_every_layout(tmp_path, layout):
    # One process group per run (re-initializing gloo inside a forked child is not reliable).
    assert_resume_is_bit_exact(_run, ["--train-iters", "4", *LAYOUTS[layout]], str(tmp_path / "ckpt"))


def _save(env: DistEnv, flags: list[str], save: str) -> None:
    _run(env, ["--train-iters", "4", "--exit-interval", "2", "--save", save, *flags])


def _single(*flags: str) -> tuple[tuple[float, ...], float | None]:
    return _run(DistEnv(), [*SINGLE, *flags])


@pytest.fixture(scope="module")
def reference() -> tuple[tuple[float, ...], float | None]:
    """The uninterrupted run, on one process."""
    return _single("--train-iters", "4")


@pytest.mark.parametrize("layout", ["tp2", "pp2", "zero1-dp2", "zero3-dp2"])
def test_universal_from_any_layout_continues_on_one_process(tmp_path, layout, reference):
    save = str(tmp_path / "ckpt")
    run_distributed(_save, LAYOUTS[layout], save)
    report = convert(save)
    assert report.output == os.path.join(save, "global_step2_universal")
    assert set(report.states) == {"fp32", "exp_avg", "exp_avg_sq", "step"}
    losses, valid = _single("--train-iters", "4", "--load", save, "--universal-checkpoint")
    assert losses == pytest.approx(reference[0][2:], rel=1e-5)
    assert valid == pytest.approx(reference[1], rel=1e-5)


@pytest.mark.parametrize(
    ("source", "target"),
    [("zero1-dp2", "tp2"), ("tp2", "zero3-dp2"), ("tp2", "pp2")],
)
def test_universal_loads_at_another_parallel_layout(tmp_path, source, target, reference):
    save = str(tmp_path / "ckpt")
    run_distributed(_save, LAYOUTS[source], save)
    convert(save)
    losses, valid = run_distributed(
        _run, ["--train-iters", "4", "--load", save, "--universal-checkpoint", *LAYOUTS[target]]
    )[0]
    assert losses == pytest.approx(reference[0][2:], rel=1e-5)
    assert valid == pytest.approx(reference[1], rel=1e-5)


def test_deepspeed_ds_to_universal_agrees_with_ours_and_loads(tmp_path, reference):
    from deepspeed.checkpoint import ds_to_universal

    save = str(tmp_path / "ckpt")
    run_distributed(_save, LAYOUTS["tp2-zero1"], save)
    ours = UniversalCheckpoint(convert(save).output)
    theirs_dir = str(tmp_path / "ds_universal")
    argv, sys.argv = sys.argv, ["ds_to_universal", "--input_folder", os.path.join(save, "global_step2"),
                                "--output_folder", theirs_dir, "--num_extract_workers", "1",
                                "--num_merge_workers", "1"]
    try:
        ds_to_universal.main(ds_to_universal.parse_arguments())
    finally:
        sys.argv = argv
    theirs = UniversalCheckpoint(theirs_dir)
    assert set(theirs.dirs) == set(ours.dirs)
    for name in ours.dirs:
        for key in ("fp32", "exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ours.full(name, key), theirs.full(name, key)), (name, key)
    losses, valid = _single("--train-iters", "4", "--load", theirs_dir, "--universal-checkpoint")
    assert losses == pytest.approx(reference[0][2:], rel=1e-5)


def test_layout_change_without_universal_is_refused_with_the_fix(tmp_path):
    save = str(tmp_path / "ckpt")
    run_distributed(_save, LAYOUTS["tp2"], save)
    with pytest.raises(ConfigError, match=r"saved at TP=2 PP=1 DP=1 ZeRO-0; this run is TP=1 .*convert_checkpoint\.py"):
        _single("--train-iters", "4", "--load", save)
    with pytest.raises(CheckpointError, match=r"holds no universal checkpoint .* convert one first"):
        _single("--train-iters", "4", "--load", save, "--universal-checkpoint")
    universal = convert(save).output
    with pytest.raises(CheckpointError, match="already a universal checkpoint"):
        convert(universal, str(tmp_path / "again"))
    with pytest.raises(ConfigError, match="holds a universal checkpoint; add --universal-checkpoint"):
        _single("--train-iters", "4", "--load", universal)
    # A given shape value that differs from the checkpoint's is refused while parsing, naming both.
    with pytest.raises(ConfigError, match=r"--hidden-size: 32 \(from --hidden-size\) differs from the 16 of the checkpoint"):
        _single("--train-iters", "4", "--load", save, "--universal-checkpoint", "--hidden-size", "32")
