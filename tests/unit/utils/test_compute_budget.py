"""utils/compute_budget.py: N, C = 6ND, tokens -> samples -> iterations, epochs = D / U, CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from megatron.config.model import ModelConfig
from utils.compute_budget import (
    epoch_iterations,
    epochs_for,
    main,
    param_count,
    parse_count,
    plan_run,
    swiglu_ffn_size,
    tokens_for_budget,
    training_flops,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_param_count_hand_worked_example():
    L, d, V = 2, 64, 128
    f = math.floor((8 * d / 3) / 64) * 64  # floor(170.67 / 64) * 64 = 2 * 64
    assert f == 128
    expected = 4 * L * d**2 + 3 * L * d * f + 6 * L * d + V * d  # 32768 + 49152 + 768 + 8192
    assert expected == 90880
    assert param_count(2, 64, 128) == expected
    assert param_count(2, 64, 128, ffn=256) == expected + 3 * L * d * (256 - 128)


@pytest.mark.parametrize("hidden", [16, 64, 96, 100, 768, 4096, 5120, 8192])
def test_swiglu_ffn_matches_the_model_config(hidden):
    assert (
        swiglu_ffn_size(hidden)
        == ModelConfig(hidden_size=hidden, num_attention_heads=1, swiglu=True).ffn_size
    )


def test_swiglu_ffn_known_sizes():
    assert swiglu_ffn_size(4096) == 10880  # floor(10922.67 / 64) * 64 = 170 * 64
    assert swiglu_ffn_size(96) == 256  # 8 * 96 / 3 = 256 exactly: no float round-down
    assert swiglu_ffn_size(16) == 64  # floor gives 0; never below 64


def test_flops_and_tokens_are_inverse():
    n = param_count(2, 64, 128)
    assert training_flops(n, 1000) == 6 * 90880 * 1000
    assert tokens_for_budget(training_flops(n, 1000), n) == 1000
    # A budget that does not buy a whole extra token rounds down (stays within budget).
    assert tokens_for_budget(6 * n * 1000 + 6 * n - 1, n) == 1000
    with pytest.raises(ValueError, match="--flops: .* buy no token"):
        tokens_for_budget(1.0, n)


@pytest.mark.parametrize(
    ("tokens", "seq", "batch", "samples", "iterations"),
    [
        (24, 4, 3, 6, 2),  # exact: 24 / 4 = 6 samples, 6 / 3 = 2 iterations
        (25, 4, 3, 7, 3),  # ceil(25 / 4) = 7 samples, ceil(7 / 3) = 3 iterations
        (1, 4096, 768, 1, 1),
        (22 * 10**9, 4096, 768, 5371094, 6994),  # the seed's TRAIN_TOKENS=22e9
    ],
)
def test_tokens_samples_iterations_rounding(tokens, seq, batch, samples, iterations):
    run = plan_run(n_params=1000, seq_length=seq, global_batch_size=batch, tokens=tokens)
    assert (run.samples, run.iterations) == (samples, iterations)
    # Same count the trainer derives from --train-tokens: ceil(tokens / (batch * seq)).
    assert run.iterations == math.ceil(tokens / (batch * seq))
    assert run.trained_tokens == iterations * batch * seq >= tokens
    assert run.flops == 6 * 1000 * tokens and run.trained_flops == 6 * 1000 * run.trained_tokens


def test_plan_from_flops_budget():
    n = 7 * 10**9
    run = plan_run(n_params=n, seq_length=4096, global_batch_size=1024, flops=1e21)
    assert run.tokens == math.floor(1e21 / (6 * n))
    assert run.iterations == math.ceil(math.ceil(run.tokens / 4096) / 1024)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "--flops: give exactly one"),
        ({"flops": 1e21, "tokens": 10}, "--flops: give exactly one"),
        ({"tokens": 10, "seq_length": 0}, "--seq-length: must be positive"),
        ({"tokens": 10, "global_batch_size": -1}, "--global-batch-size: must be positive"),
        ({"tokens": 0}, "--train-tokens: must be positive"),
    ],
)
def test_plan_errors_name_the_flag(kwargs, message):
    args = {"n_params": 100, "seq_length": 8, "global_batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        plan_run(**args)


def test_data_constrained_epochs():
    assert epochs_for(unique_tokens=100, total_tokens=400) == 4.0
    assert epochs_for(unique_tokens=3, total_tokens=1) == pytest.approx(1 / 3)
    # Trainer: subset = floor(1005 / 10) = 100 samples; ceil(ceil(2.5 * 100) / 7) = ceil(250 / 7).
    assert epoch_iterations(1005, 2.5, 10, 7) == 36
    with pytest.raises(ValueError, match="--unique-tokens: 5 tokens hold no sample"):
        epoch_iterations(5, 1.0, 10, 7)


@pytest.mark.parametrize(
    ("text", "integer", "value"),
    [
        ("7B", True, 7 * 10**9),
        ("2.5T", True, 25 * 10**11),
        ("1_000", True, 1000),
        ("1e21", False, 1e21),
        ("3k", True, 3000),
    ],
)
def test_parse_count(text, integer, value):
    assert parse_count(text, "--x", integer=integer) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "--x: 'abc' is not a number"),
        ("-1", "--x: must be positive"),
        ("1.5", "not a whole"),
    ],
)
def test_parse_count_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_count(text, "--x")


def test_cli_prints_table_and_trainer_flags(capsys):
    argv = ["--num-layers", "2", "--hidden-size", "64", "--vocab-size", "128"]
    argv += ["--train-tokens", "25", "--seq-length", "4", "--global-batch-size", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "parameters N" in out and "90,880" in out and "f=128" in out
    assert "--train-tokens 25\n" in out and "--train-iters 3\n" in out


def test_cli_data_constrained_flags(capsys):
    argv = ["--params", "1M", "--train-tokens", "4000", "--unique-tokens", "1000"]
    argv += ["--seq-length", "10", "--global-batch-size", "7"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # epochs = 4000 / 1000; trainer: ceil(ceil(4 * 100) / 7) = 58 iterations.
    assert "--unique-tokens 1000 --epochs 4   # -> 58 iterations" in out
    assert "--train-tokens" not in out


def test_cli_epochs_give_total_tokens(capsys):
    argv = ["--params", "1M", "--epochs", "2", "--unique-tokens", "1000", "--seq-length", "10"]
    assert main([*argv, "--global-batch-size", "7"]) == 0
    out = capsys.readouterr().out
    assert "2,000" in out and "--epochs 2 " in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--train-tokens", "10"], "--params: give either --params or the model shape"),
        (["--flops", "1e21", "--train-tokens", "10"], "--train-tokens: give exactly one of"),
        (["--epochs", "2"], "--epochs: needs --unique-tokens"),
        (["--flops", "lots"], "--flops: 'lots' is not a number"),
    ],
)
def test_cli_errors_exit_2_naming_the_flag(capsys, argv, message):
    base = ["--params", "1M", "--seq-length", "10", "--global-batch-size", "7"]
    if argv[0] == "--train-tokens":
        base += ["--num-layers", "2"]
    assert main([*base, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compute_budget.py: error: ") and err.count("\n") == 1
    assert message in err


def test_cli_missing_shape_flag(capsys):
    argv = ["--num-layers", "2", "--hidden-size", "64", "--flops", "1e12"]
    assert main([*argv, "--seq-length", "8", "--global-batch-size", "2"]) == 2
    assert "--vocab-size: missing; give --params, or --num-layers" in capsys.readouterr().err


def test_script_runs_from_any_directory(tmp_path):
    argv = [
        "--params",
        "7B",
        "--flops",
        "1e21",
        "--seq-length",
        "4096",
        "--global-batch-size",
        "768",
    ]
    script = os.path.join(ROOT, "utils", "compute_budget.py")
    proc = subprocess.run(
        [sys.executable, script, *argv], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    tokens = math.floor(1e21 / (6 * 7 * 10**9))
    assert f"--train-tokens {tokens}\n" in proc.stdout


def test_cli_notes_when_the_subset_rounds_the_epoch_iterations(capsys):
    # U = 1005 holds floor(1005 / 10) = 100 samples; E = 4000 / 1005 = 3.980099502;
    # trainer: ceil(ceil(3.980099502 * 100) / 7) = ceil(399 / 7) = 57, against ceil(400 / 7) = 58.
    argv = ["--params", "1M", "--train-tokens", "4000", "--unique-tokens", "1005"]
    assert main([*argv, "--seq-length", "10", "--global-batch-size", "7"]) == 0
    out = capsys.readouterr().out
    assert "--epochs 3.980099502   # -> 57 iterations" in out
    assert "differs from ceil(D / (batch*seq)) = 58" in out
