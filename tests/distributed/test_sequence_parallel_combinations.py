"""--sequence-parallel at TP=2 (2 gloo ranks) combined with the matrix optimizers, muP,
``--compile`` and bf16, against one process.

As in test_sequence_parallel: each step's loss, the global gradient norm and every updated full
weight equal the single-process run (losses and norms to 1e-5, weights to 1e-4 relative).
Muon and dshampoo rebuild each matrix from its TP shards, and their update of a replicated norm
weight (AdamW in their fallback group) needs the complete, TP-summed gradient; muP scales the
embedding output, the residual branches and the head's input inside the sequence-split region.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.distributed.test_sequence_parallel import (
    STEPS,
    TP2_SP,
    _assert_same_run,
    _relative_error,
    _trained,
)
from tests.helpers import run_distributed, tiny_plan

pytestmark = [pytest.mark.deepspeed, pytest.mark.compat("--sequence-parallel")]

RMS_GQA = ["--swiglu", "--num-key-value-heads", "2", "--untie-embeddings-and-output-weights",
           "--normalization", "rmsnorm"]  # fmt: skip
MUON = [*RMS_GQA, "--optimizer", "muon", "--muon-adamw-lr", "3e-3"]
DSHAMPOO = ["--hidden-size", "32", *RMS_GQA, "--optimizer", "dshampoo",
            "--dshampoo-start-preconditioning-step", "1", "--dshampoo-max-preconditioner-dim", "24",
            "--dshampoo-epsilon", "1e-6"]  # fmt: skip
COMPLETEP = ["--hidden-size", "32", "--num-layers", "4", "--scaling-recipe", "completep",
             "--mup-base-hidden-size", "16", "--mup-base-num-layers", "2",
             "--mup-embedding-mult", "2", "--mup-output-mult", "1.5"]  # fmt: skip
COMPILE = ["--compile", "--compile-backend", "aot_eager"]


def _saving(env: DistEnv, flags: list[str], out: str) -> tuple[list[float], list[float]]:
    """Losses and grad norms of the run; rank 0 writes the full weights to ``out`` (.npz)."""
    losses, norms, weights = _trained(env, flags)
    if env.rank == 0:
        np.savez(out, **weights)
    return losses, norms


@pytest.mark.parametrize(
    ("model_flags", "weight_rel"),
    [(MUON, 1e-4), (DSHAMPOO, 3e-4), (COMPLETEP, 1e-4),
     pytest.param([*COMPLETEP, "--zero-stage", "1"], 1e-4, marks=pytest.mark.slow)],
    ids=["muon", "dshampoo", "completep", "completep-zero1"],
)
def test_sequence_parallel_with_matrix_optimizers_and_mup(model_flags, weight_rel, tmp_path):
    # Losses and grad norms equal one process. Adam (and Shampoo's inverse roots) turn rounding
    # of tiny gradient elements into visible weight differences: TP=2 without SP already differs
    # from one process by up to 3e-4 in some weights here. So the SP run's weights are compared
    # with TP=2 without SP, whose gradients it must reproduce up to summation order: to 1e-4
    # (measured up to 5e-5), and to 3e-4 under Shampoo with its epsilon of 1e-6 (measured 1.1e-4).
    reference = _trained(DistEnv(), model_flags)
    tp_flags = ["--tensor-model-parallel-size", "2", *model_flags]
    tp = run_distributed(_saving, tp_flags, str(tmp_path / "tp.npz"))
    sp = run_distributed(_saving, [*TP2_SP, *model_flags], str(tmp_path / "sp.npz"))
    for losses, norms in sp:
        assert losses == pytest.approx(reference[0], rel=1e-5)
        assert norms == pytest.approx(reference[1], rel=1e-5)
        assert losses == pytest.approx(tp[0][0], rel=1e-5)
        assert norms == pytest.approx(tp[0][1], rel=1e-5)
    tp_weights, sp_weights = np.load(tmp_path / "tp.npz"), np.load(tmp_path / "sp.npz")
    assert sorted(sp_weights.files) == sorted(tp_weights.files)
    errors = {name: _relative_error(sp_weights[name], tp_weights[name]) for name in tp_weights.files}
    bad = [f"{name}: relative error {e:.1e}" for name, e in errors.items() if e > weight_rel]
    assert bad == []


@pytest.mark.slow
def test_compiled_sequence_parallel_matches_eager_single_process():
    # The compiled layers trace our all-gather / reduce-scatter autograd functions.
    reference = _trained(DistEnv(), [])
    _assert_same_run([*TP2_SP, *COMPILE], reference)


def _bf16_losses(env: DistEnv, flags: list[str]) -> list[float]:
    result = train(tiny_plan(*STEPS, "--bf16", "--zero-stage", "1", *flags, env=env), env)
    return [*result.losses, result.valid_loss]


@pytest.mark.slow
def test_bf16_sequence_parallel_stays_near_bf16_tensor_parallel():
    # bf16 rounds differently with every summation order, so no run is equal to another: SP and
    # TP-only runs both stay within 1e-3 of the fp32 single process, as bf16 ZeRO-1 does elsewhere.
    reference, _, _ = _trained(DistEnv(), [])
    tp = run_distributed(_bf16_losses, ["--tensor-model-parallel-size", "2"])
    sp = run_distributed(_bf16_losses, TP2_SP)
    for losses in (*tp, *sp):
        assert losses == pytest.approx(reference, rel=1e-3)
    assert sp[0] == pytest.approx(tp[0], rel=1e-3)


def _run(env: DistEnv, flags: list[str]) -> tuple[tuple[float, ...], float | None]:
    result = train(tiny_plan("--train-iters", "4", *RMS_GQA, *flags, env=env), env)
    return result.losses, result.valid_loss


@pytest.mark.parametrize("zero", [pytest.param("0", marks=pytest.mark.slow), "1"])
def test_universal_from_one_process_continues_at_sequence_parallel(tmp_path, zero):
    # A checkpoint of one process, converted to universal, resumes at TP=2 + SP (ZeRO-0/1):
    # the remaining steps equal the uninterrupted single-process run's.
    from megatron.checkpointing.convert import convert

    save = str(tmp_path / "ckpt")
    reference = _run(DistEnv(), [])
    _run(DistEnv(), ["--exit-interval", "2", "--save", save])
    convert(save)
    flags = ["--load", save, "--universal-checkpoint", *TP2_SP, "--zero-stage", zero]
    for losses, valid in run_distributed(_run, flags):
        assert losses == pytest.approx(reference[0][2:], rel=1e-5)
        assert valid == pytest.approx(reference[1], rel=1e-5)


def _odd_batch_error(env: DistEnv) -> str:
    from megatron.distributed import destroy_distributed, init_distributed
    from megatron.model.gpt import GPTModel

    plan = tiny_plan("--train-iters", "1", *TP2_SP, env=env)
    init_distributed(plan, env)
    try:
        with pytest.raises(ValueError) as error:
            GPTModel(plan.model)(torch.zeros(1, 15, dtype=torch.long))
    finally:
        destroy_distributed()
    return str(error.value)


def test_a_batch_not_divisible_by_tp_is_refused_naming_the_flags():
    # --seq-length is checked up front; a caller feeding another length gets the same message
    # instead of shards of different lengths failing inside a collective.
    for message in run_distributed(_odd_batch_error):
        assert message == ("--sequence-parallel: a batch of sequence length 15 is not divisible by "
                           "--tensor-model-parallel-size 2; feed sequences of a multiple of 2 tokens")


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["full", "selective"])
def test_sequence_parallel_with_recompute_matches_single_process(granularity):
    # Recomputed layers repeat their all-gathers and draw the same dropout masks.
    flags = ["--recompute-granularity", granularity]
    _assert_same_run([*TP2_SP, *flags], _trained(DistEnv(), flags))
