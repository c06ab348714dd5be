"""Muon at TP=2 and ZeRO-1/2 (2 gloo processes) takes the single-process steps.

- same update: TP=2, DP=2 ZeRO-1, DP=2 ZeRO-2 and TP=2 ZeRO-1 reproduce the single-process
  losses (3 steps and the validation loss after them) to rel 1e-5, fused QKV/fc1 as one matrix
  or split (``--muon-split-fused``), on a SwiGLU + GQA model; TP=2 x DP=2 ZeRO-1 at 4 processes
  (slow); PP=2 ZeRO-1; --bf16 at ZeRO-1/2 and in a PP=2 pipeline within 1e-3 of the fp32 steps;
- cost: Newton-Schulz multiply-adds per rank (``ns_cost`` of every matrix a rank orthogonalizes,
  counted around ``orthogonalize``) at DP=2 at most 0.6x one process's; optimizer-state bytes per
  rank at ZeRO-1 DP=2 at most 0.55x ZeRO-0's;
- checkpoints: resume bit-exact at ZeRO-1 DP=2 and TP=2; ZeRO-1 DP=2 and TP=2 ZeRO-1 convert to a
  universal checkpoint that one process continues with the uninterrupted run's losses.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import assert_resume_is_bit_exact, run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed

LLAMA = ["--swiglu", "--num-key-value-heads", "2", "--untie-embeddings-and-output-weights",
         "--normalization", "rmsnorm", "--optimizer", "muon", "--lr", "1e-2", "--muon-adamw-lr", "3e-3"]
# Global batch 4 everywhere.
LAYOUTS = {
    "single": ["--micro-batch-size", "4"],
    "tp2": ["--tensor-model-parallel-size", "2", "--micro-batch-size", "4"],
    "zero0-dp2": ["--zero-stage", "0", "--micro-batch-size", "2"],
    "zero1-dp2": ["--zero-stage", "1", "--micro-batch-size", "2"],
    "zero2-dp2": ["--zero-stage", "2", "--micro-batch-size", "2"],
    "tp2-zero1": ["--tensor-model-parallel-size", "2", "--zero-stage", "1", "--micro-batch-size", "4"],
    "pp2-zero1": ["--pipeline-model-parallel-size", "2", "--zero-stage", "1", "--micro-batch-size", "2",
                  "--gradient-accumulation-steps", "2"],
}


def _probe(env: DistEnv, flags: list[str]) -> dict:
    """Losses (+ validation), Newton-Schulz multiply-adds and optimizer-state bytes of a run."""
    from megatron.optimizer import OPTIMIZERS, muon_torch
    from megatron.optimizer import muon_options as muon

    built, flops, real = [], [0], muon_torch.orthogonalize
    spec = OPTIMIZERS["muon"]

    def counting(m, **kwargs):
        flops[0] += min(muon.ns_cost(m.size(0), m.size(1), kwargs["steps"]))
        return real(m, **kwargs)

    def build(*args):
        built.append(spec.build(*args))
        return built[-1]

    muon_torch.orthogonalize = counting
    OPTIMIZERS["muon"] = dataclasses.replace(spec, build=build)
    try:
        result = train(tiny_plan(*LLAMA, *flags, env=env), env)
    finally:
        muon_torch.orthogonalize, OPTIMIZERS["muon"] = real, spec
    state_bytes = sum(v.numel() * v.element_size() for s in built[0].state.values()
                      for v in s.values() if hasattr(v, "numel"))
    return {"losses": [*result.losses, result.valid_loss], "flops": flops[0], "state_bytes": state_bytes}


def _single(*flags: str) -> dict:
    return _probe(DistEnv(), [*LAYOUTS["single"], *flags])


@pytest.fixture(scope="module")
def reference() -> dict:
    return _single("--train-iters", "3")


@pytest.mark.parametrize("layout", ["tp2", "zero1-dp2", "zero2-dp2", "tp2-zero1", "pp2-zero1"])
def test_layouts_take_the_single_process_steps(layout, reference):
    ranks = run_distributed(_probe, ["--train-iters", "3", *LAYOUTS[layout]])
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the pipeline's first stage reports the last's
    assert ranks[0]["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    assert reference["losses"][-1] < reference["losses"][0] - 0.05  # it trained


@pytest.mark.parametrize("layout", ["tp2", "zero1-dp2"])
def test_split_fused_layouts_take_the_single_process_steps(layout):
    split = ["--muon-split-fused", "--train-iters", "3"]
    single = _single(*split)
    ranks = run_distributed(_probe, [*split, *LAYOUTS[layout]])
    assert ranks[0]["losses"] == pytest.approx(single["losses"], rel=1e-5)
    # Q, K, V and gate, up are separate matrices: a different update from the fused one.
    assert single["losses"][1:] != pytest.approx(_single("--train-iters", "3")["losses"][1:], rel=1e-6)


@pytest.mark.parametrize("zero", ["0", "1", "2"])
def test_newton_schulz_work_is_split_over_data_parallel_ranks(zero, reference):
    ranks = run_distributed(_probe, ["--train-iters", "3", "--zero-stage", zero, "--micro-batch-size", "2"])
    for rank in ranks:
        assert rank["flops"] <= 0.6 * reference["flops"], (rank["flops"], reference["flops"])
    assert sum(r["flops"] for r in ranks) == reference["flops"]  # each matrix exactly once


def test_zero1_shards_the_optimizer_state():
    zero0 = run_distributed(_probe, ["--train-iters", "1", *LAYOUTS["zero0-dp2"]])
    zero1 = run_distributed(_probe, ["--train-iters", "1", *LAYOUTS["zero1-dp2"]])
    for rank in zero1:
        assert rank["state_bytes"] <= 0.55 * zero0[0]["state_bytes"], (rank, zero0[0])


def _run(env: DistEnv, flags: list[str]) -> tuple[tuple[float, ...], float | None]:
    result = train(tiny_plan(*LLAMA, *flags, env=env), env)
    return result.losses, result.valid_loss


@pytest.mark.parametrize("layout", ["zero1-dp2", "tp2"])
def test_resume_is_bit_exact(tmp_path, layout):
    assert_resume_is_bit_exact(_run, ["--train-iters", "4", *LAYOUTS[layout]], str(tmp_path / "ckpt"))


@pytest.mark.parametrize("layout", ["zero1-dp2", "tp2-zero1"])
def test_universal_checkpoint_continues_on_one_process(tmp_path, layout):
    from megatron.checkpointing.convert import convert

    save = str(tmp_path / "ckpt")
    run_distributed(_run, ["--train-iters", "4", "--exit-interval", "2", "--save", save, *LAYOUTS[layout]])
    report = convert(save)
    assert report.output == os.path.join(save, "global_step2_universal")
    assert "momentum_buffer" in report.states
    reference = _run(DistEnv(), ["--train-iters", "4", *LAYOUTS["single"]])
    losses, valid = _run(DistEnv(), ["--train-iters", "4", "--load", save, "--universal-checkpoint",
                                     *LAYOUTS["single"]])
    assert losses == pytest.approx(reference[0][2:], rel=1e-5)
    assert valid == pytest.approx(reference[1], rel=1e-5)


@pytest.mark.slow
def test_tp2_by_dp2_zero1_at_four_processes_takes_the_single_process_steps(reference):
    flags = ["--train-iters", "3", "--tensor-model-parallel-size", "2", "--zero-stage", "1",
             "--micro-batch-size", "2"]
    ranks = run_distributed(_probe, flags, world_size=4, timeout_s=600)
    assert all(r["losses"] == ranks[0]["losses"] for r in ranks)
    assert ranks[0]["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    assert sum(r["flops"] for r in ranks) == reference["flops"]  # each logical matrix once, on one rank
    assert max(r["flops"] for r in ranks) <= 0.6 * reference["flops"]


@pytest.mark.parametrize("zero", ["1", "2"])
def test_bf16_zero_stays_near_the_fp32_steps(zero, reference):
    # --bf16 at ZeRO-1/2: bf16 weights and gradients, fp32 flat master partitions that Muon binds
    # to. Measured within 1e-4 of the fp32 single-process losses (bf16 forward/backward rounding).
    losses = run_distributed(_probe, ["--bf16", "--train-iters", "3", "--zero-stage", zero,
                                      "--micro-batch-size", "2"])[0]["losses"]
    assert losses == pytest.approx(reference["losses"], rel=1e-3)


def test_bf16_pipeline_stays_near_the_fp32_steps(reference):
    # DeepSpeed's bf16 pipeline optimizer hands Muon flat fp32 partitions, bound like ZeRO-1's.
    flags = ["--bf16", "--train-iters", "3", "--pipeline-model-parallel-size", "2", "--micro-batch-size", "2",
             "--gradient-accumulation-steps", "2"]
    ranks = run_distributed(_probe, flags)
    assert ranks[1]["losses"] == pytest.approx(reference["losses"], rel=1e-3)


def test_universal_checkpoint_from_tp2_loads_at_zero1_dp2(tmp_path):
    # And back: a TP=2 checkpoint, converted, continues at DP=2 ZeRO-1 (momentum re-partitioned).
    from megatron.checkpointing.convert import convert

    save = str(tmp_path / "ckpt")
    run_distributed(_run, ["--train-iters", "4", "--exit-interval", "2", "--save", save, *LAYOUTS["tp2"]])
    convert(save)
    reference = _run(DistEnv(), ["--train-iters", "4", *LAYOUTS["single"]])
    losses, valid = run_distributed(_run, ["--train-iters", "4", "--load", save, "--universal-checkpoint",
                                           *LAYOUTS["zero1-dp2"]])[0]
    assert losses == pytest.approx(reference[0][2:], rel=1e-5)
    assert valid == pytest.approx(reference[1], rel=1e-5)
