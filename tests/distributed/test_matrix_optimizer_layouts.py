"""Every matrix optimizer (``param_policy="matrix"``: Muon, dshampoo) takes the single-process
steps at TP=2, ZeRO-1/2 and PP=2 (2 gloo processes). One conformance suite, parametrized over
the registry's matrix optimizers; a new one needs a ``CASES`` entry (its flags) to be registered.

- same update: TP=2, DP=2 ZeRO-1, DP=2 ZeRO-2, TP=2 ZeRO-1 and PP=2 ZeRO-1 reproduce the
  single-process losses (3 steps and the validation loss after them) to rel 1e-5 on a SwiGLU +
  GQA model (dshampoo preconditioned from step 1, blocks of max dim 24 crossing the TP shard
  boundaries); TP=2 x DP=2 ZeRO-1 at 4 processes (slow); --bf16 at ZeRO-1 (Muon also ZeRO-2)
  and in a PP=2 pipeline within 1e-3 of the fp32 steps;
- sharded state: a rank's optimizer-state bytes at ZeRO-1 DP=2 are at most 0.55x ZeRO-0's;
  dshampoo keeps every matrix's statistics on exactly one rank; Muon's Newton-Schulz
  multiply-adds per rank (``ns_cost`` of every matrix a rank orthogonalizes, counted around
  ``orthogonalize``) at DP=2 are at most 0.6x one process's, each matrix orthogonalized once;
  Muon with ``--muon-split-fused`` (QKV/fc1 as separate matrices) at TP=2 and ZeRO-1;
- blocks from the logical matrix (dshampoo): column-, row-parallel and SwiGLU fc1 shards stepped
  at TP=2 equal the single-process step to 1e-5;
- checkpoints: resume bit-exact at ZeRO-1 DP=2 and TP=2; ZeRO-1 DP=2 and TP=2 ZeRO-1 convert to
  a universal checkpoint (dshampoo's blocks taken from their owner ranks) that one process
  continues with the uninterrupted run's losses, and TP=2's continues at ZeRO-1 DP=2.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import pytest

from megatron.config import DistEnv
from megatron.optimizer import OPTIMIZERS
from megatron.trainer.loop import train
from tests.helpers import assert_resume_is_bit_exact, run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed

MODEL = ["--swiglu", "--num-key-value-heads", "2", "--untie-embeddings-and-output-weights",
         "--normalization", "rmsnorm"]
DSHAMPOO_FREQUENCY = "--dshampoo-precondition-frequency"


@dataclasses.dataclass(frozen=True)
class Case:
    """How one matrix optimizer runs the suite.

    Attributes:
        flags: Model and optimizer flags of every run.
        defaults: Flags added unless the test gives them (dshampoo: inverse roots every step).
        resume: Flags of the checkpoint tests (``--train-iters`` included).
        stop: The step the checkpoint tests save at.
        universal_states: State keys a universal checkpoint must carry.
        owns_matrix_states: Each matrix's statistics live on one rank (dshampoo's ``L_0``).
        counts_newton_schulz: The run's Newton-Schulz work is counted (Muon).
        bf16_zero_stages: ZeRO stages of the --bf16 test.
        slow_universal: Layouts whose universal-checkpoint test is marked slow.
    """

    flags: tuple[str, ...]
    defaults: tuple[str, ...] = ()
    resume: tuple[str, ...] = ("--train-iters", "4")
    stop: int = 2
    universal_states: frozenset[str] = frozenset({"momentum_buffer"})
    owns_matrix_states: bool = False
    counts_newton_schulz: bool = False
    bf16_zero_stages: tuple[str, ...] = ("1",)
    slow_universal: tuple[str, ...] = ()


CASES = {
    "muon": Case(
        flags=(*MODEL, "--optimizer", "muon", "--lr", "1e-2", "--muon-adamw-lr", "3e-3"),
        counts_newton_schulz=True,
        bf16_zero_stages=("1", "2"),
    ),
    "dshampoo": Case(
        flags=("--hidden-size", "32", *MODEL, "--optimizer", "dshampoo", "--lr", "3e-3",
               "--dshampoo-start-preconditioning-step", "1", "--dshampoo-max-preconditioner-dim", "24",
               "--dshampoo-epsilon", "1e-6"),
        defaults=(DSHAMPOO_FREQUENCY, "1"),
        # Roots refreshed at steps 1, 3, 5: the resumed step 4 uses the saved inverse roots,
        # step 5 the saved statistics.
        resume=("--train-iters", "5", DSHAMPOO_FREQUENCY, "2"),
        stop=3,
        universal_states=frozenset({"momentum_buffer", "exp_avg_sq", "L_0", "R_inv_0"}),
        owns_matrix_states=True,
        slow_universal=("tp2-zero1",),
    ),
}
MATRIX_OPTIMIZERS = sorted(name for name, spec in OPTIMIZERS.items() if spec.param_policy == "matrix")

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
BF16_PIPELINE = ["--bf16", "--train-iters", "3", "--pipeline-model-parallel-size", "2",
                 "--micro-batch-size", "2", "--gradient-accumulation-steps", "2"]


def _flags(name: str, *flags: str) -> list[str]:
    """The optimizer's flags, its defaults that ``flags`` do not give, then ``flags``."""
    case = CASES[name]
    defaults = [] if case.defaults[:1] and case.defaults[0] in flags else list(case.defaults)
    return [*case.flags, *defaults, *flags]


def _optimizer(flags: list[str]) -> str:
    return flags[flags.index("--optimizer") + 1]


def _probe(env: DistEnv, flags: list[str]) -> dict:
    """Losses (+ validation), Newton-Schulz multiply-adds, optimizer-state bytes and the matrices
    whose statistics this rank holds."""
    from megatron.optimizer import muon_torch
    from megatron.optimizer import muon_options as muon

    name = _optimizer(flags)
    built, flops, real, spec = [], [0], muon_torch.orthogonalize, OPTIMIZERS[name]

    def counting(m, **kwargs):
        flops[0] += min(muon.ns_cost(m.size(0), m.size(1), kwargs["steps"]))
        return real(m, **kwargs)

    def build(*args):
        built.append(spec.build(*args))
        return built[-1]

    muon_torch.orthogonalize = counting
    try:
        with OPTIMIZERS.override(name, dataclasses.replace(spec, build=build)):
            result = train(tiny_plan(*flags, env=env), env)
    finally:
        muon_torch.orthogonalize = real
    states = built[0].state.values()
    state_bytes = sum(v.numel() * v.element_size() for s in states for v in s.values() if hasattr(v, "numel"))
    owned = sum(1 for s in states for key in s if key.endswith("L_0"))
    return {"losses": [*result.losses, result.valid_loss], "flops": flops[0], "state_bytes": state_bytes,
            "owned": owned}


def _run(env: DistEnv, flags: list[str]) -> tuple[tuple[float, ...], float | None]:
    result = train(tiny_plan(*flags, env=env), env)
    return result.losses, result.valid_loss


def _single(name: str, *flags: str) -> dict:
    return _probe(DistEnv(), _flags(name, *LAYOUTS["single"], *flags))


@functools.cache
def _reference(name: str) -> dict:
    return _single(name, "--train-iters", "3")


def test_every_matrix_optimizer_has_a_case():
    assert MATRIX_OPTIMIZERS == sorted(CASES) == ["dshampoo", "muon"]


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
@pytest.mark.parametrize("layout", ["tp2", "zero1-dp2", "zero2-dp2", "tp2-zero1", "pp2-zero1"])
def test_layouts_take_the_single_process_steps(name, layout):
    reference = _reference(name)
    ranks = run_distributed(_probe, _flags(name, "--train-iters", "3", *LAYOUTS[layout]))
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the pipeline's first stage reports the last's
    assert ranks[0]["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    assert reference["losses"][-1] < reference["losses"][0] - 0.05  # it trained
    if CASES[name].owns_matrix_states:
        # Each matrix's statistics on one rank: together the single process's.
        assert ranks[0]["owned"] + ranks[1]["owned"] == reference["owned"] > 0
        assert min(r["owned"] for r in ranks) > 0  # and the work is shared


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
def test_zero1_shards_the_optimizer_state(name):
    zero0 = run_distributed(_probe, _flags(name, "--train-iters", "1", *LAYOUTS["zero0-dp2"]))
    zero1 = run_distributed(_probe, _flags(name, "--train-iters", "1", *LAYOUTS["zero1-dp2"]))
    if CASES[name].owns_matrix_states:
        assert zero0[0]["state_bytes"] == zero0[1]["state_bytes"]  # ZeRO-0: every replica has all
    for rank in zero1:
        assert rank["state_bytes"] <= 0.55 * zero0[0]["state_bytes"], (rank, zero0[0])


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
@pytest.mark.parametrize("layout", ["zero1-dp2", "tp2"])
def test_resume_is_bit_exact(tmp_path, name, layout):
    case = CASES[name]
    assert_resume_is_bit_exact(_run, _flags(name, *case.resume, *LAYOUTS[layout]), str(tmp_path / "ckpt"),
                               stop=case.stop)


def _universal_params() -> list:
    return [pytest.param(name, layout,
                         marks=[pytest.mark.slow] if layout in CASES[name].slow_universal else [])
            for name in MATRIX_OPTIMIZERS for layout in ("zero1-dp2", "tp2-zero1")]


@pytest.mark.parametrize(("name", "layout"), _universal_params())
def test_universal_checkpoint_continues_on_one_process(tmp_path, name, layout):
    from megatron.checkpointing.convert import convert

    case, save = CASES[name], str(tmp_path / "ckpt")
    run_distributed(_run, _flags(name, *case.resume, "--exit-interval", str(case.stop), "--save", save,
                                 *LAYOUTS[layout]))
    report = convert(save)
    assert report.output == os.path.join(save, f"global_step{case.stop}_universal")
    assert case.universal_states <= set(report.states)
    reference = _run(DistEnv(), _flags(name, *case.resume, *LAYOUTS["single"]))
    losses, valid = _run(DistEnv(), _flags(name, *case.resume, "--load", save, "--universal-checkpoint",
                                           *LAYOUTS["single"]))
    assert losses == pytest.approx(reference[0][case.stop:], rel=1e-5)
    assert valid == pytest.approx(reference[1], rel=1e-5)


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
def test_universal_checkpoint_from_tp2_loads_at_zero1_dp2(tmp_path, name):
    # And back: a TP=2 checkpoint, converted, continues at DP=2 ZeRO-1 (momentum re-partitioned,
    # dshampoo's blocks saved by TP=2's owners land on ZeRO-1 DP=2's owners).
    from megatron.checkpointing.convert import convert

    case, save = CASES[name], str(tmp_path / "ckpt")
    run_distributed(_run, _flags(name, *case.resume, "--exit-interval", str(case.stop), "--save", save,
                                 *LAYOUTS["tp2"]))
    convert(save)
    reference = _run(DistEnv(), _flags(name, *case.resume, *LAYOUTS["single"]))
    losses, valid = run_distributed(_run, _flags(name, *case.resume, "--load", save, "--universal-checkpoint",
                                                 *LAYOUTS["zero1-dp2"]))[0]
    assert losses == pytest.approx(reference[0][case.stop:], rel=1e-5)
    assert valid == pytest.approx(reference[1], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
def test_tp2_by_dp2_zero1_at_four_processes_takes_the_single_process_steps(name):
    reference = _reference(name)
    flags = _flags(name, "--train-iters", "3", "--tensor-model-parallel-size", "2", "--zero-stage", "1",
                   "--micro-batch-size", "2")
    ranks = run_distributed(_probe, flags, world_size=4, timeout_s=600)
    assert all(r["losses"] == ranks[0]["losses"] for r in ranks)
    assert ranks[0]["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    if CASES[name].counts_newton_schulz:
        assert sum(r["flops"] for r in ranks) == reference["flops"]  # each logical matrix once, on one rank
        assert max(r["flops"] for r in ranks) <= 0.6 * reference["flops"]
    if CASES[name].owns_matrix_states:
        assert sum(r["owned"] for r in ranks) == reference["owned"]


@pytest.mark.parametrize(("name", "zero"),
                         [(n, z) for n in MATRIX_OPTIMIZERS for z in CASES[n].bf16_zero_stages])
def test_bf16_zero_stays_near_the_fp32_steps(name, zero):
    # --bf16 at ZeRO-1/2: bf16 weights and gradients, fp32 flat master partitions that the
    # optimizer binds to. Measured within 1.2e-4 of the fp32 single-process losses (bf16
    # forward/backward rounding).
    losses = run_distributed(_probe, _flags(name, "--bf16", "--train-iters", "3", "--zero-stage", zero,
                                            "--micro-batch-size", "2"))[0]["losses"]
    assert losses == pytest.approx(_reference(name)["losses"], rel=1e-3)


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
def test_bf16_pipeline_stays_near_the_fp32_steps(name):
    # DeepSpeed's bf16 pipeline optimizer hands the optimizer flat fp32 partitions, bound like ZeRO-1's.
    reference = _reference(name)
    ranks = run_distributed(_probe, _flags(name, *BF16_PIPELINE))
    assert ranks[1]["losses"] == pytest.approx(reference["losses"], rel=1e-3)  # the last stage's
    if CASES[name].owns_matrix_states:
        assert ranks[0]["owned"] + ranks[1]["owned"] == reference["owned"]  # each stage its matrices


# ---- Muon only: its Newton-Schulz work and --muon-split-fused ------------------------------------


@pytest.mark.parametrize("layout", ["tp2", "zero1-dp2"])
def test_muon_split_fused_layouts_take_the_single_process_steps(layout):
    split = ["--muon-split-fused", "--train-iters", "3"]
    single = _single("muon", *split)
    ranks = run_distributed(_probe, _flags("muon", *split, *LAYOUTS[layout]))
    assert ranks[0]["losses"] == pytest.approx(single["losses"], rel=1e-5)
    # Q, K, V and gate, up are separate matrices: a different update from the fused one.
    fused = _single("muon", "--train-iters", "3")
    assert single["losses"][1:] != pytest.approx(fused["losses"][1:], rel=1e-6)


@pytest.mark.parametrize("zero", ["0", "1", "2"])
def test_muon_newton_schulz_work_is_split_over_data_parallel_ranks(zero):
    reference = _reference("muon")
    ranks = run_distributed(_probe, _flags("muon", "--train-iters", "3", "--zero-stage", zero,
                                           "--micro-batch-size", "2"))
    for rank in ranks:
        assert rank["flops"] <= 0.6 * reference["flops"], (rank["flops"], reference["flops"])
    assert sum(r["flops"] for r in ranks) == reference["flops"]  # each matrix exactly once


# ---- dshampoo only: blocks of the logical matrix under TP --------------------------------------


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


def test_dshampoo_tp_blocks_come_from_the_logical_matrix():
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
