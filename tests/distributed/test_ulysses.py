"""DeepSpeed-Ulysses (--ds-sequence-parallel-size 2, 2 gloo ranks) against one process.

Each step's loss, the global gradient norm and every updated weight equal the single-process run
to 1e-5 relative: the all-to-all only moves numbers, the positions of each sequence shard are the
global ones (rotary tables and learned positions), the loss is the SP group's token mean and the
gradients are summed over the SP ranks. Checkpoints are data-like: resume is bit-exact and a
universal checkpoint moves between SP=2 and one process both ways.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import (
    assert_resume_is_bit_exact,
    local_weights,
    run_distributed,
    tiny_plan,
    train_recording,
)

pytestmark = [pytest.mark.deepspeed, pytest.mark.compat("--ds-sequence-parallel-size")]

STEPS = ["--train-iters", "3", "--lr", "1e-2"]
SP2 = ["--ds-sequence-parallel-size", "2"]
LLAMA = ["--swiglu", "--num-key-value-heads", "2", "--untie-embeddings-and-output-weights",
         "--normalization", "rmsnorm"]  # fmt: skip
CASES = {
    "gelu-tied-rope": [],
    "swiglu-gqa-untied": LLAMA,
    "mdm-learned-positions": ["--objective", "mdm", "--no-use-rotary-position-embeddings"],
    "zero1-fused-ce": ["--zero-stage", "1", "--fused-linear-cross-entropy", "--fused-ce-chunk-tokens", "12"],
}


def _trained(env: DistEnv, flags: list[str]) -> tuple[list[float], list[float], dict[str, np.ndarray]]:
    """(losses + final validation loss, per-step grad norms, weights after the run)."""
    return train_recording(tiny_plan(*STEPS, *flags, env=env), env, local_weights)


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12))


def _compared(env: DistEnv, flags: list[str], reference) -> tuple[list[float], list[float], list[str]]:  # noqa: ANN001
    """This rank's losses and grad norms at SP=2, and the names of weights that differ from
    ``reference``'s (compared here: the weights would not fit the result pipe)."""
    losses, norms, weights = _trained(env, [*SP2, *flags])
    want = reference[2]
    bad = [f"{n}: {_relative_error(weights[n], w):.1e}" for n, w in want.items()
           if n not in weights or _relative_error(weights[n], w) > 1e-4]
    return losses, norms, bad + sorted(set(weights) - set(want))


@pytest.mark.parametrize("case", sorted(CASES))
def test_ulysses_matches_single_process(case):
    # One training run per fork: the 2-rank harness cannot start a second run in a fork.
    reference = _trained(DistEnv(), CASES[case])
    for losses, norms, bad in run_distributed(_compared, CASES[case], reference):
        assert losses == pytest.approx(reference[0], rel=1e-5)
        assert norms == pytest.approx(reference[1], rel=1e-5)
        assert bad == []


def _losses(env: DistEnv, flags: list[str]) -> list[float]:
    result = train(tiny_plan(*STEPS, *flags, env=env), env)
    return [*result.losses, result.valid_loss]


@pytest.mark.slow
def test_ulysses_with_tensor_parallelism_and_zero_matches_single_process():
    # TP=2 x SP=2 on 4 processes: heads / (TP x SP) = 1 per rank in the attention core.
    flags = ["--swiglu", "--untie-embeddings-and-output-weights", "--zero-stage", "1"]
    reference = _losses(DistEnv(), flags)
    ranks = run_distributed(_losses, [*SP2, "--tensor-model-parallel-size", "2", *flags], world_size=4,
                            timeout_s=500)
    for got in ranks:
        assert got == pytest.approx(reference, rel=1e-5)


def _shard_positions(env: DistEnv) -> tuple[list[int], int, list[int]]:
    from megatron.data.loader import Batch
    from megatron.distributed import destroy_distributed, init_distributed
    from megatron.model import ulysses

    init_distributed(tiny_plan("--train-iters", "1", *SP2, env=env), env)
    try:
        full = torch.arange(16).view(1, 16)
        shard = ulysses.sequence_shard(Batch(full, full + 1, full > 3, torch.zeros(1)))
        count = ulysses.sp_total(shard.loss_mask.sum())
        return shard.tokens[0].tolist(), int(count), [ulysses.position_offset(8)]
    finally:
        destroy_distributed()


def test_each_sp_rank_holds_its_contiguous_shard_at_global_positions():
    (tokens0, count0, offset0), (tokens1, count1, offset1) = run_distributed(_shard_positions)
    assert (tokens0, tokens1) == (list(range(8)), list(range(8, 16)))
    assert offset0 == [0] and offset1 == [8]
    assert count0 == count1 == 12  # the loss denominator counts the whole group's tokens


@pytest.mark.parametrize(
    ("flags", "world", "message"),
    [
        (["--ds-sequence-parallel-size", "4", "--num-attention-heads", "6", "--hidden-size", "24"], 4,
         r"--ds-sequence-parallel-size: --num-attention-heads 6 is not divisible by "
         r"--tensor-model-parallel-size 1 x --ds-sequence-parallel-size 4 = 4"),
        ([*SP2, "--num-key-value-heads", "2", "--tensor-model-parallel-size", "2"], 4,
         r"--num-key-value-heads 2 is not divisible by --tensor-model-parallel-size 2 x"),
        ([*SP2, "--seq-length", "15"], 2,
         r"--ds-sequence-parallel-size: --seq-length 15 is not divisible by --ds-sequence-parallel-size 2"),
        ([*SP2, "--tensor-model-parallel-size", "2"], 2,
         r"--ds-sequence-parallel-size: TP 2 x PP 1 x SP 2 = 4 does not divide the world size 2"),
        ([*SP2, "--pipeline-model-parallel-size", "2"], 4,
         r"--ds-sequence-parallel-size 2: cannot be combined with --pipeline-model-parallel-size 2"),
        ([*SP2, "--tensor-model-parallel-size", "2", "--sequence-parallel"], 4,
         r"cannot be combined with --sequence-parallel"),
        ([*SP2, "--zero-stage", "3"], 2, r"cannot be combined with --zero-stage 3"),
        ([*SP2, "--optimizer", "muon"], 2, r"cannot be combined with --optimizer muon"),
        ([*SP2, "--hidden-dropout", "0.1"], 2, r"cannot be combined with --hidden-dropout"),
        ([*SP2, "--compile"], 2, r"cannot be combined with --compile"),
    ],
)
def test_bad_ulysses_input_is_refused_naming_the_flags(flags, world, message):
    from megatron.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        tiny_plan(*flags, env=DistEnv(world_size=world))


def test_dry_run_layout_names_the_sp_dimension():
    plan = tiny_plan("--train-iters", "1", *SP2, "--micro-batch-size", "1", env=DistEnv(world_size=4))
    summary = plan.summary()
    assert (summary["sp"], summary["dp"], summary["global_batch_size"]) == (2, 2, 2)
    assert summary["layout"].startswith("world 4 = TP 1 x SP 2 x DP 2 x PP 1")


def _run(env: DistEnv, flags: list[str]) -> tuple[tuple[float, ...], float | None]:
    result = train(tiny_plan(*flags, env=env), env)
    return result.losses, result.valid_loss


@pytest.mark.slow
def test_resume_is_bit_exact_with_ulysses(tmp_path):
    assert_resume_is_bit_exact(_run, ["--train-iters", "4", *SP2, "--zero-stage", "1"], str(tmp_path / "ckpt"))


def _save_at_sp2(env: DistEnv, save: str) -> None:
    _run(env, ["--train-iters", "4", "--exit-interval", "2", "--save", save, *SP2, "--zero-stage", "1"])


def _load_at_sp2(env: DistEnv, universal: str) -> tuple:
    return _run(env, ["--train-iters", "4", "--load", universal, "--universal-checkpoint", *SP2])


@pytest.mark.slow
def test_universal_checkpoint_moves_between_ulysses_and_one_process(tmp_path):
    from megatron.checkpointing.convert import convert

    reference = _run(DistEnv(), ["--train-iters", "4"])
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run(DistEnv(), ["--train-iters", "4", "--exit-interval", "2", "--save", one, "--zero-stage", "1"])
    convert(one)
    run_distributed(_save_at_sp2, two)
    convert(two)
    loaded_at_sp2 = run_distributed(_load_at_sp2, one)[0]
    loaded_at_one = _run(DistEnv(), ["--train-iters", "4", "--load", two, "--universal-checkpoint"])
    for losses, valid in (loaded_at_sp2, loaded_at_one):
        assert losses == pytest.approx(reference[0][2:], rel=1e-5)
        assert valid == pytest.approx(reference[1], rel=1e-5)
