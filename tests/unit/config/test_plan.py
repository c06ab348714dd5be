"""resolve(): derived values computed once, and impossible combinations rejected by flag."""

from __future__ import annotations

import pytest

from megatron.config import ConfigError, DistEnv, parse_args
from megatron.plan import resolve

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length",
    "--normalization", "--swiglu", "--disable-bias-linear", "--init-method-std", "--mock-data",
    "--data-file-list", "--micro-batch-size", "--global-batch-size", "--train-iters", "--train-samples",
    "--train-tokens", "--bf16", "--fp16", "--optimizer", "--lr", "--min-lr", "--lr-decay-iters",
    "--lr-warmup-iters", "--lr-warmup-tokens", "--lr-warmup-fraction", "--tensor-model-parallel-size",
    "--pipeline-model-parallel-size", "--zero-stage", "--cpu-optimizer")

BASE = ["--mock-data", "--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "8",
        "--seq-length", "128", "--train-iters", "100"]


def plan_of(*flags: str, world: int = 1):
    return resolve(parse_args([*BASE, *flags]).config, DistEnv(world_size=world))


def test_grad_accum_derived_from_global_batch():
    plan = plan_of("--micro-batch-size", "2", "--global-batch-size", "32", "--tensor-model-parallel-size", "2", world=8)
    assert (plan.dp, plan.grad_accum_steps, plan.global_batch_size) == (4, 4, 32)
    assert plan.tokens_per_step == 32 * 128


def test_global_batch_derived_from_grad_accum():
    plan = plan_of("--micro-batch-size", "2", "--gradient-accumulation-steps", "16", world=4)
    assert (plan.dp, plan.global_batch_size) == (4, 128)


def test_default_accumulation_is_one():
    plan = plan_of("--micro-batch-size", "3", world=2)
    assert (plan.grad_accum_steps, plan.global_batch_size) == (1, 6)


def test_train_iters_from_tokens_rounds_up():
    flags = ["--micro-batch-size", "2", "--global-batch-size", "8"]
    plan = resolve(parse_args([*BASE[:-2], *flags, "--train-tokens", str(8 * 128 * 10 + 1)]).config, DistEnv())
    assert plan.train_iters == 11
    plan = resolve(parse_args([*BASE[:-2], *flags, "--train-samples", "81"]).config, DistEnv())
    assert plan.train_iters == 11


def test_consistent_run_lengths_are_accepted_and_inconsistent_rejected():
    flags = [*BASE[:-2], "--micro-batch-size", "1"]
    assert resolve(parse_args([*flags, "--train-iters", "10", "--train-tokens", "1280"]).config, DistEnv()).train_iters == 10
    with pytest.raises(ConfigError, match=r"--train-iters: run lengths disagree"):
        resolve(parse_args([*flags, "--train-iters", "10", "--train-tokens", "2560"]).config, DistEnv())


def test_missing_run_length():
    with pytest.raises(ConfigError, match=r"--train-iters: the run length is missing"):
        resolve(parse_args(BASE[:-2]).config, DistEnv())


def test_warmup_fraction_of_decay_steps():
    plan = plan_of("--lr-warmup-fraction", "0.05", "--lr-decay-iters", "80")
    assert (plan.warmup_steps, plan.decay_steps) == (4, 80)
    assert plan_of("--lr-warmup-tokens", str(128 * 3)).warmup_steps == 3


def test_two_warmup_units_rejected():
    with pytest.raises(ConfigError, match=r"--lr-warmup-iters: give one of --lr-warmup-iters, --lr-warmup-fraction"):
        plan_of("--lr-warmup-iters", "5", "--lr-warmup-fraction", "0.1")


@pytest.mark.parametrize(
    ("flags", "world", "message"),
    [
        (["--tensor-model-parallel-size", "3"], 3, r"--tensor-model-parallel-size: 3 does not divide --num-attention-heads 8"),
        (["--tensor-model-parallel-size", "2"], 3, r"--tensor-model-parallel-size: TP 2 x PP 1 = 2 does not divide the world size 3"),
        (["--pipeline-model-parallel-size", "2", "--tensor-model-parallel-size", "2"], 6, r"TP 2 x PP 2 = 4 does not divide the world size 6"),
        (["--micro-batch-size", "3", "--global-batch-size", "16"], 2, r"--global-batch-size: 16 is not divisible by --micro-batch-size 3 x data-parallel size 2 = 6"),
        (["--global-batch-size", "8", "--gradient-accumulation-steps", "3"], 1, r"--gradient-accumulation-steps: 3 disagrees with --global-batch-size 8"),
        (["--pipeline-model-parallel-size", "8"], 8, r"--pipeline-model-parallel-size: 8 stages for --num-layers 4"),
        (["--zero-stage", "2", "--pipeline-model-parallel-size", "2"], 2, r"--zero-stage: 2 cannot be combined with --pipeline-model-parallel-size 2"),
        (["--min-lr", "1", "--lr", "0.1"], 1, r"--min-lr: 1.0 is above --lr 0.1"),
        (["--num-key-value-heads", "3"], 1, r"--num-key-value-heads: 3 does not divide --num-attention-heads 8"),
        (["--word-embedding-init-std", "0.6"], 1, r"--word-embedding-init-std: goes together with --adjust-word-embedding-init"),
        (["--bf16", "--fp16"], 1, r"--bf16: cannot be combined with --fp16"),
        (["--cpu-optimizer"], 1, r"--cpu-optimizer: needs --zero-stage 1, 2 or 3"),
    ],
)
def test_bad_combinations_fail_before_any_process_group(flags, world, message):
    with pytest.raises(ConfigError, match=message):
        plan_of(*flags, world=world)


def test_vocabulary_padding_is_independent_of_tp():
    one = plan_of(world=1)
    two = plan_of("--tensor-model-parallel-size", "2", world=2)
    assert one.model.original_vocab_size == 258  # byte tokenizer
    assert one.model.vocab_size == two.model.vocab_size == 384


def test_swiglu_ffn_rule_from_spec():
    assert plan_of("--swiglu").model.ffn_hidden_size == int((8 * 64 / 3) // 64) * 64
    assert plan_of().model.ffn_hidden_size == 4 * 64


def test_parameter_count_matches_a_hand_count():
    plan = plan_of("--swiglu", "--normalization", "rmsnorm", "--disable-bias-linear", "--num-key-value-heads", "2")
    m = plan.model
    d, f, L, V, hd = 64, m.ffn_hidden_size, 4, 384, 8
    attn = d * (8 * hd + 2 * 2 * hd) + 8 * hd * d
    mlp = 2 * d * f + f * d
    expected = L * (attn + mlp + 2 * d) + V * d + d
    assert m.num_parameters() == expected


def test_missing_data_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"--data-file-list: no training data"):
        resolve(parse_args(["--train-iters", "1"]).config, DistEnv())


def test_small_init_recipe_and_its_conflict():
    from tests.helpers import tiny_plan

    plan = tiny_plan("--train-iters", "1", "--hidden-size", "40", "--small-init",
                     "--adjust-word-embedding-init", "--word-embedding-init-std", "0.632")
    assert plan.model.init_method_std == pytest.approx((2 / (5 * 40)) ** 0.5)
    assert plan.model.output_init_std == pytest.approx((2 / 200) ** 0.5 / 2.0)  # / sqrt(2 * 2 layers)
    assert plan.model.embedding_init_std == 0.632
    assert tiny_plan("--train-iters", "1").model.init_method_std == 0.02
    with pytest.raises(ConfigError, match="--small-init: .* drop --init-method-std"):
        tiny_plan("--train-iters", "1", "--small-init", "--init-method-std", "0.01")


@pytest.mark.parametrize(
    ("optimizer", "flags", "message"),
    [
        ("dshampoo", ["--zero-stage", "3"],
         r"dshampoo is not correct under --zero-stage 3 \(supports up to ZeRO-2\); use --zero-stage 2"),
        ("dshampoo", ["--zero-stage", "1", "--fp16"],
         r"^--fp16: dshampoo with --pipeline-model-parallel-size 1 --zero-stage 1 is untested"),
        ("muon", ["--pipeline-model-parallel-size", "2", "--fp16"],
         r"^--fp16: muon with --pipeline-model-parallel-size 2 --zero-stage 0 is untested"),
        ("muon", ["--zero-stage", "1", "--fp16"],
         r"^--fp16: muon with --pipeline-model-parallel-size 1 --zero-stage 1 is untested"),
        ("muon", ["--zero-stage", "3"],
         r"muon is not correct under --zero-stage 3 \(supports up to ZeRO-2\); use --zero-stage 2"),
    ],
)
def test_matrix_optimizers_refuse_layouts_that_split_matrices(optimizer, flags, message):
    from tests.helpers import tiny_plan

    with pytest.raises(ConfigError, match=message):
        tiny_plan("--train-iters", "1", "--optimizer", optimizer, *flags)


@pytest.mark.parametrize("optimizer", ["muon", "dshampoo"])
def test_muon_accepts_tensor_parallel_zero_1_2_and_bf16_pipelines(optimizer):
    from tests.helpers import tiny_plan

    for flags in (["--tensor-model-parallel-size", "2"], ["--zero-stage", "1"], ["--zero-stage", "2"],
                  ["--pipeline-model-parallel-size", "2", "--zero-stage", "1"],
                  ["--pipeline-model-parallel-size", "2", "--bf16"]):
        tiny_plan("--train-iters", "1", "--optimizer", optimizer, *flags, env=DistEnv(world_size=2))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tensor-model-parallel-size", "2"],
         "dshampoo updates whole matrices, which --tensor-model-parallel-size 2 splits; use TP=1"),
        (["--pipeline-model-parallel-size", "2", "--bf16"], "with --pipeline-model-parallel-size > 1 needs fp32"),
    ],
)
def test_a_matrix_optimizer_that_does_not_reassemble_matrices_is_refused(flags, message):
    # Every matrix optimizer we ship reassembles matrices; the refusal stays for one that does not.
    import dataclasses

    from megatron.optimizer import OPTIMIZERS
    from tests.helpers import tiny_plan

    unassembled = dataclasses.replace(OPTIMIZERS["dshampoo"], reassembles_matrices=False)
    with OPTIMIZERS.override("dshampoo", unassembled), pytest.raises(ConfigError, match=message):
        tiny_plan("--train-iters", "1", "--optimizer", "dshampoo", *flags, env=DistEnv(world_size=2))
