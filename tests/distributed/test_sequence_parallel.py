"""--sequence-parallel at TP=2 (2 gloo ranks) against one process.

Each step's loss, the global gradient norm and every updated full weight equal the single-process
run to 1e-5 relative (the same full weights at every TP size; only summation orders differ).
The gradient norm and the weights catch the classic sequence-parallel bug, a missing TP
all-reduce of the norms' gradients (each rank's norm sees half the positions), which Adam's
normalized update hides from the loss for a few steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import (
    assert_resume_is_bit_exact,
    run_distributed,
    tiny_plan,
    tp_full_weights,
    train_recording,
)

pytestmark = [pytest.mark.deepspeed, pytest.mark.compat("--sequence-parallel")]

STEPS = ["--train-iters", "3", "--lr", "1e-2"]
TP2_SP = ["--tensor-model-parallel-size", "2", "--sequence-parallel"]
LLAMA = ["--swiglu", "--num-key-value-heads", "2", "--untie-embeddings-and-output-weights",
         "--normalization", "rmsnorm"]  # fmt: skip


def _trained(env: DistEnv, flags: list[str]) -> tuple[list[float], list[float], dict[str, np.ndarray]]:
    """(losses + final validation loss, per-step grad norms, full weights after the run)."""
    return train_recording(tiny_plan(*STEPS, *flags, env=env), env, tp_full_weights)


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """``|got - want| / |want|`` (Frobenius): single elements near zero may differ more, as
    Adam's first steps scale tiny gradients up to the learning rate."""
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12))


def _without_key_bias(weights: dict[str, np.ndarray], kv_heads: int) -> None:
    """Zero the key rows of the QKV biases: softmax ignores a per-key-head shift, so their
    gradient is rounding noise, which Adam's normalized step scales up to the learning rate."""
    for name, w in weights.items():
        if name.endswith("query_key_value.bias"):
            group = 4 // kv_heads  # rows per key/value group: [q_1 .. q_group, k, v]
            w.reshape(kv_heads, group + 2, -1)[:, group] = 0.0


def _compared(env: DistEnv, flags: list[str], reference) -> tuple[list[float], list[float], list[str]]:  # noqa: ANN001
    """This rank's losses and grad norms, and the names of weights that differ from
    ``reference``'s (compared here: the weights would not fit the result pipe)."""
    losses, norms, weights = _trained(env, flags)
    kv_heads = 2 if "--num-key-value-heads" in flags else 4
    _without_key_bias(weights, kv_heads)
    _without_key_bias(reference[2], kv_heads)
    bad = [f"{name}: relative error {_relative_error(weights[name], w):.1e}"
           for name, w in reference[2].items()
           if name not in weights or _relative_error(weights[name], w) > 1e-4]
    return losses, norms, bad + sorted(set(weights) - set(reference[2]))


def _assert_same_run(flags: list[str], reference) -> None:  # noqa: ANN001
    for losses, norms, bad in run_distributed(_compared, flags, reference):
        assert losses == pytest.approx(reference[0], rel=1e-5)
        assert norms == pytest.approx(reference[1], rel=1e-5)
        assert bad == []


@pytest.mark.parametrize(
    "model_flags",
    [[], LLAMA, ["--fused-linear-cross-entropy", "--fused-ce-chunk-tokens", "12"], ["--objective", "mdm"]],
    ids=["gelu-tied", "swiglu-gqa-untied", "fused-ce", "mdm"],
)
def test_sequence_parallel_matches_single_process(model_flags):
    _assert_same_run([*TP2_SP, *model_flags], _trained(DistEnv(), model_flags))


@pytest.mark.parametrize("zero", ["1", pytest.param("2", marks=pytest.mark.slow)])
def test_sequence_parallel_with_zero_matches_single_process(zero):
    # 4 processes would be DP=2; at 2 processes TP=2 x DP=1 with ZeRO's partitioned optimizer.
    _assert_same_run([*TP2_SP, "--zero-stage", zero], _trained(DistEnv(), []))


def _losses(env: DistEnv, flags: list[str]) -> list[float]:
    result = train(tiny_plan(*STEPS, *flags, env=env), env)
    return [*result.losses, result.valid_loss]


@pytest.mark.slow
def test_sequence_parallel_with_pipeline_matches_single_process():
    flags = ["--gradient-accumulation-steps", "2", "--untie-embeddings-and-output-weights"]
    reference = _losses(DistEnv(), flags)
    ranks = run_distributed(
        _losses, [*TP2_SP, "--pipeline-model-parallel-size", "2", *flags], world_size=4, timeout_s=400
    )
    for got in ranks[2:]:  # the last stage's ranks report the losses
        assert got == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sequence-parallel"], r"--sequence-parallel: needs --tensor-model-parallel-size > 1"),
        ([*TP2_SP, "--seq-length", "15"],
         r"--sequence-parallel: --seq-length 15 is not divisible by --tensor-model-parallel-size 2"),
    ],
)
def test_bad_sequence_parallel_input_is_refused_naming_the_flags(flags, message):
    from megatron.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match=message):
        tiny_plan(*flags, env=DistEnv(world_size=2))


def _run(env: DistEnv, flags: list[str]) -> tuple[tuple[float, ...], float | None]:
    result = train(tiny_plan(*flags, env=env), env)
    return result.losses, result.valid_loss


@pytest.mark.slow
def test_resume_is_bit_exact_with_sequence_parallel(tmp_path):
    assert_resume_is_bit_exact(_run, ["--train-iters", "4", *TP2_SP], str(tmp_path / "ckpt"))


def _save(env: DistEnv, save: str) -> None:
    _run(env, ["--train-iters", "4", "--exit-interval", "2", "--save", save, *TP2_SP])


def test_universal_from_sequence_parallel_continues_on_one_process(tmp_path):
    from megatron.checkpointing.convert import convert

    save = str(tmp_path / "ckpt")
    run_distributed(_save, save)
    convert(save)
    losses, valid = _run(DistEnv(), ["--train-iters", "4", "--load", save, "--universal-checkpoint"])
    reference = _run(DistEnv(), ["--train-iters", "4"])
    assert losses == pytest.approx(reference[0][2:], rel=1e-5)
    assert valid == pytest.approx(reference[1], rel=1e-5)


def _dropout_masks(env: DistEnv) -> tuple[list, list]:
    from megatron.distributed import destroy_distributed, init_distributed
    from megatron.model import sequence_parallel as sp

    init_distributed(tiny_plan("--train-iters", "1", *TP2_SP, env=env), env)
    try:
        torch.manual_seed(5)  # the same RNG state on both ranks, as in training
        mask = sp.dropout(torch.ones(8, 2, 16), 0.5)
        torch.manual_seed(5)
        full = torch.empty(16, 2, 16).bernoulli_(0.5) * 2.0
    finally:
        destroy_distributed()
    return mask.tolist(), full.tolist()


def test_sequence_parallel_dropout_masks_differ_across_shards():
    (mask0, full), (mask1, _) = run_distributed(_dropout_masks)
    assert mask0 != mask1  # not one pattern repeated over the shards
    assert mask0 + mask1 == full  # the chunks of one full-sequence draw
