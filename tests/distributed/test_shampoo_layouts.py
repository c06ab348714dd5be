"""dshampoo at TP=2 and ZeRO-1/2 (2 gloo processes) takes the single-process steps.

- same update: TP=2, DP=2 ZeRO-1, DP=2 ZeRO-2, TP=2 ZeRO-1 and PP=2 ZeRO-1 reproduce the single-process losses
  (3 steps, preconditioned from step 1, and the validation loss after them) to rel 1e-5 on a
  SwiGLU + GQA model whose blocks (max dim 24) cross the TP shard boundaries; TP=2 x DP=2 ZeRO-1
  at 4 processes (slow); --bf16 at ZeRO-1 and in a PP=2 pipeline within 1e-3 of the fp32 steps;
- sharded state: at ZeRO-1 DP=2 every matrix's statistics live on exactly one rank, and a rank's
  optimizer-state bytes are at most 0.55x ZeRO-0's;
- blocks from the logical matrix: column-, row-parallel and SwiGLU fc1 shards stepped at TP=2
  equal the single-process step to 1e-5 (blocks crossing the shard boundaries);
- checkpoints: resume bit-exact at ZeRO-1 DP=2 and TP=2; ZeRO-1 DP=2 and TP=2 ZeRO-1 convert to a
  universal checkpoint (blocks taken from their owner ranks) that one process continues with the
  uninterrupted run's losses, and TP=2's continues at ZeRO-1 DP=2.
"""

from __future__ import annotations

import dataclasses

import pytest

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import assert_resume_is_bit_exact, run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed

LLAMA = ["--hidden-size", "32", "--swiglu", "--num-key-value-heads", "2",
         "--untie-embeddings-and-output-weights", "--normalization", "rmsnorm",
         "--optimizer", "dshampoo", "--lr", "3e-3", "--dshampoo-start-preconditioning-step", "1",
         "--dshampoo-max-preconditioner-dim", "24",
         "--dshampoo-epsilon", "1e-6"]
FREQUENCY = "--dshampoo-precondition-frequency"
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
    """Losses (+ validation), optimizer-state bytes and the preconditioned matrices of a run."""
    from megatron.optimizer import OPTIMIZERS

    built, spec = [], OPTIMIZERS["dshampoo"]

    def build(*args):
        built.append(spec.build(*args))
        return built[-1]

    OPTIMIZERS["dshampoo"] = dataclasses.replace(spec, build=build)
    try:
        result = train(_plan(env, flags), env)
    finally:
        OPTIMIZERS["dshampoo"] = spec
    states = built[0].state.values()
    state_bytes = sum(v.numel() * v.element_size() for s in states for v in s.values() if hasattr(v, "numel"))
    owned = sum(1 for s in states for key in s if key.endswith("L_0"))
    return {"losses": [*result.losses, result.valid_loss], "state_bytes": state_bytes, "owned": owned}


def _plan(env: DistEnv, flags: list[str]):
    """The tiny Llama with ``flags``; inverse roots every step unless the flags say otherwise."""
    return tiny_plan(*LLAMA, *([] if FREQUENCY in flags else [FREQUENCY, "1"]), *flags, env=env)


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
    # Each matrix's statistics on one rank: together the single process's.
    assert ranks[0]["owned"] + ranks[1]["owned"] == reference["owned"] > 0
    assert min(r["owned"] for r in ranks) > 0  # and the work is shared


def test_zero1_shards_the_optimizer_state():
    zero0 = run_distributed(_probe, ["--train-iters", "1", *LAYOUTS["zero0-dp2"]])
    zero1 = run_distributed(_probe, ["--train-iters", "1", *LAYOUTS["zero1-dp2"]])
    assert zero0[0]["state_bytes"] == zero0[1]["state_bytes"]  # ZeRO-0: every replica has all
    for rank in zero1:
        assert rank["state_bytes"] <= 0.55 * zero0[0]["state_bytes"], (rank, zero0[0])


def _run(env: DistEnv, flags: list[str]) -> tuple[tuple[float, ...], float | None]:
    result = train(_plan(env, flags), env)
    return result.losses, result.valid_loss


def test_bf16_zero1_and_bf16_pipeline_stay_near_the_fp32_steps(reference):
    # bf16 weights and gradients, fp32 flat master partitions (ZeRO-1; DeepSpeed's bf16 pipeline
    # optimizer) that dshampoo binds to. Measured within 1.2e-4 of the fp32 single-process losses.
    zero1 = run_distributed(_probe, ["--bf16", "--train-iters", "3", *LAYOUTS["zero1-dp2"]])
    assert zero1[0]["losses"] == pytest.approx(reference["losses"], rel=1e-3)
    pipeline = run_distributed(_probe, ["--bf16", "--train-iters", "3", "--pipeline-model-parallel-size", "2",
                                        "--micro-batch-size", "2", "--gradient-accumulation-steps", "2"])
    assert pipeline[1]["losses"] == pytest.approx(reference["losses"], rel=1e-3)  # the last stage's
    assert pipeline[0]["owned"] + pipeline[1]["owned"] == reference["owned"]  # each stage its matrices


# Roots refreshed at steps 1, 3, 5: the resumed step 4 uses the saved inverse roots, step 5 the
# saved statistics.
RESUME = ["--train-iters", "5", FREQUENCY, "2"]


@pytest.mark.parametrize("layout", ["zero1-dp2", "tp2"])
def test_resume_is_bit_exact(tmp_path, layout):
    assert_resume_is_bit_exact(_run, [*RESUME, *LAYOUTS[layout]], str(tmp_path / "ckpt"), stop=3)


@pytest.mark.parametrize("layout", ["zero1-dp2", pytest.param("tp2-zero1", marks=pytest.mark.slow)])
def test_universal_checkpoint_continues_on_one_process(tmp_path, layout):
    from megatron.checkpointing.convert import convert

    save = str(tmp_path / "ckpt")
    run_distributed(_run, [*RESUME, "--exit-interval", "3", "--save", save, *LAYOUTS[layout]])
    report = convert(save)
    assert {"momentum_buffer", "exp_avg_sq", "L_0", "R_inv_0"} <= set(report.states)
    reference = _run(DistEnv(), [*RESUME, *LAYOUTS["single"]])
    losses, valid = _run(DistEnv(), [*RESUME, "--load", save, "--universal-checkpoint", *LAYOUTS["single"]])
    assert losses == pytest.approx(reference[0][3:], rel=1e-5)
    assert valid == pytest.approx(reference[1], rel=1e-5)


def test_universal_checkpoint_from_tp2_loads_at_zero1_dp2(tmp_path):
    # And back: blocks saved by TP=2's owners land on ZeRO-1 DP=2's owners.
    from megatron.checkpointing.convert import convert

    save = str(tmp_path / "ckpt")
    run_distributed(_run, [*RESUME, "--exit-interval", "3", "--save", save, *LAYOUTS["tp2"]])
    convert(save)
    reference = _run(DistEnv(), [*RESUME, *LAYOUTS["single"]])
    losses, valid = run_distributed(_run, [*RESUME, "--load", save, "--universal-checkpoint",
                                           *LAYOUTS["zero1-dp2"]])[0]
    assert losses == pytest.approx(reference[0][3:], rel=1e-5)
    assert valid == pytest.approx(reference[1], rel=1e-5)


@pytest.mark.slow
def test_tp2_by_dp2_zero1_at_four_processes_takes_the_single_process_steps(reference):
    flags = ["--train-iters", "3", "--tensor-model-parallel-size", "2", "--zero-stage", "1",
             "--micro-batch-size", "2"]
    ranks = run_distributed(_probe, flags, world_size=4, timeout_s=600)
    assert all(r["losses"] == ranks[0]["losses"] for r in ranks)
    assert ranks[0]["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    assert sum(r["owned"] for r in ranks) == reference["owned"]


def _shard_steps(env: DistEnv, weights: dict, grads: list[dict], options: object) -> dict:
    """dshampoo steps on this TP rank's shards of ``weights`` (bound by hand); the shards as lists."""
    import torch
    import torch.distributed as dist

    from megatron.checkpointing.layout import split
    from megatron.optimizer.matrix_distributed import GroupLayout, MatrixLayout, make_units
    from megatron.optimizer.shampoo_torch import DShampoo

    dist.init_process_group("gloo", init_method=f"tcp://{env.master_addr}:{env.master_port}",
                            rank=env.rank, world_size=env.world_size)
    try:
        params = {k: torch.nn.Parameter(split(w, k, env.rank, 2).clone()) for k, w in weights.items()}
        opt = DShampoo([{"params": list(params.values()), "name": "m"}], lr=0.1, options=options)
        matrices = [MatrixLayout(name=k, shape=tuple(p.shape), tp_dim=int(k == "dim1"),
                                 interleaved=k == "swiglu") for k, p in params.items()]
        opt.bind({"m": GroupLayout(matrices=matrices, units=make_units(matrices, 2))}, dist.group.WORLD)
        for step_grads in grads:
            for k, p in params.items():
                p.grad = split(step_grads[k], k, env.rank, 2).clone()
            opt.step()
        return {k: p.detach().tolist() for k, p in params.items()}  # tensors die with the process
    finally:
        dist.destroy_process_group()


def test_tp_blocks_come_from_the_logical_matrix():
    # Column-, row-parallel and the stride-2 SwiGLU fc1: blocks of 20 cross the shard boundaries,
    # so Shampoo on shards (or on [gate_r; up_r] in shard order) is a different step.
    import torch

    from megatron.checkpointing.layout import merge
    from megatron.optimizer.shampoo import DShampooOptions
    from megatron.optimizer.shampoo_torch import DShampoo

    options = DShampooOptions(max_preconditioner_dim=20, start_preconditioning_step=1,
                                   precondition_frequency=1, epsilon=1e-6)
    gen = torch.Generator().manual_seed(0)
    shapes = {"dim0": (48, 16), "dim1": (16, 48), "swiglu": (48, 16)}
    weights = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    grads = [{k: torch.randn(s, generator=gen) for k, s in shapes.items()} for _ in range(2)]
    full = {k: torch.nn.Parameter(w.clone()) for k, w in weights.items()}
    opt = DShampoo([{"params": list(full.values())}], lr=0.1, options=options)
    for step_grads in grads:
        for k, p in full.items():
            p.grad = step_grads[k].clone()
        opt.step()
    ranks = run_distributed(_shard_steps, weights, grads, options)
    for k, p in full.items():
        merged = merge([torch.tensor(r[k]) for r in ranks], k)
        torch.testing.assert_close(merged, p.detach(), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(p.detach(), weights[k], atol=1e-3)  # it moved
