"""``--compile``: each transformer layer under torch.compile gives eager's losses; the step that
compiles is logged on its own and left out of tokens/s.

The fast tests trace with dynamo's ``eager`` backend (graph capture, no code generation); the
slow ones generate code with inductor's C++ backend on the CPU (about a minute of compiling on
two busy cores) and run activation checkpointing through AOTAutograd.
"""

from __future__ import annotations

import logging

import pytest
import torch

from megatron.config import DistEnv
from megatron.distributed import ParallelContext
from megatron.model.compile import CompileWatch, compiled_graphs
from megatron.trainer.loop import train
from megatron.trainer.metrics import Reporter
from tests.helpers import tiny_plan

STEPS = ("--train-iters", "3", "--lr", "1e-2")


def run(*flags: str):
    return train(tiny_plan(*STEPS, *flags), DistEnv())


def test_compiled_layers_trace_to_eager_losses_and_time_the_compile_step(capsys):
    reference = run()
    capsys.readouterr()
    compiled = run("--compile", "--compile-backend", "eager")
    assert compiled.losses == reference.losses  # the same kernels, bit for bit
    assert compiled.valid_loss == reference.valid_loss  # eval mode recompiles and still agrees
    text = capsys.readouterr().out
    assert "--compile: 2 transformer layers under torch.compile(backend='eager')" in text
    assert "--compile: step 1 compiled" in text and "--compile: step 2" not in text
    assert "iter      1/3 | loss" in text and "tok/s n/a (compiling steps only)" in text
    line_2 = next(line for line in text.splitlines() if "iter      2/3" in line)
    assert " tok/s | " in line_2  # throughput of the compiled steady state


def _reporter(*flags: str) -> Reporter:
    ctx = ParallelContext(env=DistEnv(), device=torch.device("cpu"), backend="gloo", tp_rank=0,
                          tp_size=1, pp_rank=0, pp_size=1, dp_rank=0, dp_size=1)
    return Reporter(tiny_plan(*flags), ctx)


def test_compile_watch_takes_the_compiling_step_out_of_the_window():
    reporter = _reporter("--train-iters", "10", "--log-interval", "5")
    watch = CompileWatch(True, torch.device("cpu"))
    fn = torch.compile(lambda x: x * 2 + 1, backend="eager")
    before = compiled_graphs()
    with watch.step(reporter, iteration=0):
        fn(torch.ones(3))
    assert compiled_graphs() == before + 1
    with watch.step(reporter, iteration=1):
        fn(torch.ones(3))  # cached: nothing compiles
    assert watch.steps == [1] and watch.total_seconds > 0
    assert reporter.window.untimed_steps == 1
    reporter.on_step(1, torch.tensor(2.0), 1e-3, None, False)
    reporter.on_step(2, torch.tensor(4.0), 1e-3, torch.tensor(0.5), False)
    assert reporter.window.steps == 2 and reporter.window.untimed_steps == 1
    off = CompileWatch(False, torch.device("cpu"))
    with off.step(reporter, iteration=2):
        torch.compile(lambda x: x - 1, backend="eager")(torch.ones(2))
    assert off.steps == [] and reporter.window.untimed_steps == 1


def test_log_line_reads_device_losses_once_and_counts_only_timed_steps(caplog):
    reporter = _reporter("--train-iters", "10", "--log-interval", "2")
    reporter.exclude_step(0.0)
    with caplog.at_level(logging.INFO, logger="megatron.trainer.metrics"):
        reporter.on_step(1, torch.tensor(1.5), 1e-3, None, False)
        reporter.on_step(2, torch.tensor(2.5, dtype=torch.float32), 1e-3, torch.tensor(3.0), False)
    assert reporter.last_train_loss == 2.0
    line = next(line for line in caplog.text.splitlines() if "iter      2/10" in line)
    assert "grad norm 3.000" in line and " tok/s" in line
    assert reporter.window.steps == 0 and reporter.window.untimed_steps == 0  # a new window


@pytest.mark.slow
def test_inductor_cpu_compiled_losses_equal_eager():
    reference = run("--hidden-size", "32")
    compiled = run("--hidden-size", "32", "--compile")
    assert compiled.losses == pytest.approx(reference.losses, rel=1e-5)
    assert compiled.valid_loss == pytest.approx(reference.valid_loss, rel=1e-5)


@pytest.mark.slow
def test_compile_with_activation_checkpointing_equals_eager():
    flags = ("--recompute-activations", "--swiglu", "--normalization", "rmsnorm")
    reference = run(*flags)
    compiled = run(*flags, "--compile", "--compile-backend", "aot_eager")
    assert compiled.losses == pytest.approx(reference.losses, rel=1e-6)


@pytest.mark.slow
def test_checkpoint_of_a_compiled_run_resumes_eagerly(tmp_path):
    save = str(tmp_path / "ckpt")
    full = train(tiny_plan("--train-iters", "4"), DistEnv())
    first = train(tiny_plan("--train-iters", "4", "--save", save, "--exit-interval", "2", "--compile",
                            "--compile-backend", "eager"), DistEnv())
    second = train(tiny_plan("--train-iters", "4", "--save", save, "--load", save), DistEnv())
    assert first.losses + second.losses == full.losses  # parameter names unchanged by compile


def test_compile_options_without_compile_are_refused():
    from megatron.config import ConfigError

    with pytest.raises(ConfigError, match="--compile-mode: max-autotune needs --compile"):
        tiny_plan(*STEPS, "--compile-mode", "max-autotune")
    with pytest.raises(ConfigError, match="--compile-mode: max-autotune needs .*inductor"):
        tiny_plan(*STEPS, "--compile", "--compile-mode", "max-autotune", "--compile-backend", "eager")
    with pytest.raises(ConfigError, match="--compile-backend: has no effect without --compile"):
        tiny_plan(*STEPS, "--compile-backend", "aot_eager")
    assert tiny_plan(*STEPS, "--compile", "--compile-mode", "max-autotune").config.train.compile
