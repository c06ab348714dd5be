"""Size ladders (ALCF/presets/arch/<ladder>/) and isoFLOP run lists (tools/isoflop.py)."""

from __future__ import annotations

import subprocess

import pytest

from megatron.config.fields import ConfigError
from megatron.experiments.ladder import isoflop_runs, load_ladder
from megatron.model.spec import approx_parameters
from tools import isoflop


def test_datablations_ladder_parameter_counts_by_our_formula():
    rungs = load_ladder("datablations")
    assert len(rungs) == 41 and rungs[0].name == "14M" and rungs[-1].name == "2980M"
    r425 = next(r for r in rungs if r.name == "425M")
    # 18 layers of d 1280, SwiGLU f = floor(8*1280/3/64)*64 = 3392, GPT-2 vocabulary.
    assert (r425.num_layers, r425.hidden_size, r425.ffn_hidden_size) == (18, 1280, 3392)
    assert r425.params == 4 * 18 * 1280**2 + 3 * 18 * 1280 * 3392 + 6 * 18 * 1280 + 50257 * 1280
    for r in rungs:  # the study's labels are its own count; ours stays within 10-16% of them
        assert 0.93 <= r.params / (float(r.name[:-1]) * 1e6) <= 1.16, r.name


def test_isoflop_runs_train_c_over_6n_tokens_and_refuse_too_small_budgets():
    rungs = [r for r in load_ladder("tiny", vocab_size=258) if r.name in ("L1-d32", "L2-d32", "L2-d48", "L2-d64")]
    runs = isoflop_runs([1e10, 1e11], rungs, tokens_per_step=2048, min_steps=10)
    by_name = {r.name: r for r in runs}
    n = approx_parameters(2, 64, 128, 258)
    assert by_name["C1e+11__L2-d64"].overrides == {"train_tokens": int(1e11 // (6 * n))}
    assert by_name["C1e+11__L2-d64"].labels["flops_budget"] == 1e11
    # 1e10 FLOPs buy L2-d64 only 1e10 / (6 * 99,200) = 16,800 tokens < 10 steps of 2,048: left out.
    assert "C1e+10__L2-d64" not in by_name and "C1e+10__L1-d32" in by_name
    constrained = isoflop_runs([1e11], rungs[:1], tokens_per_step=2048, unique_tokens=100_000)
    tokens = int(1e11 // (6 * rungs[0].params))
    assert constrained[0].overrides == {"unique_tokens": 100_000, "epochs": float(f"{tokens / 100_000:.10g}")}
    with pytest.raises(ConfigError, match="too small for the smallest rung L1-d32"):
        isoflop_runs([1e9], rungs, tokens_per_step=2048)


def test_isoflop_tool_lists_and_refuses_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail(f"a run started: {a}"))
    assert isoflop.main(["--ladder", "datablations", "--list"]) == 0
    assert "425M  18  1280   3392     416,887,040" in capsys.readouterr().out
    assert isoflop.main(["--ladder", "tiny", "--flops", "1e9,1e11", "--output-dir", str(tmp_path)]) == 2
    assert "--flops: 1e+09 FLOPs is too small for the smallest rung" in capsys.readouterr().err
    assert isoflop.main(["--ladder", "nope", "--flops", "1e11"]) == 2
    assert "unknown ladder 'nope'; known: datablations, tiny" in capsys.readouterr().err
    assert isoflop.main(["--ladder", "tiny", "--flops", "1e11", "--sizes", "L2-d64,huge"]) == 2
    assert "--sizes: 'huge' is not a rung of tiny" in capsys.readouterr().err
    argv = ["--ladder", "tiny", "--flops", "2e10,6e10", "--sizes", "L1-d32,L2-d32,L2-d48",
            "--output-dir", str(tmp_path), "--name", "iso", "--dry-run"]
    assert isoflop.main(argv) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("new ")]
    assert len(lines) == 6 and "--train-tokens" in lines[0] and "arch/tiny/L1-d32.yaml" in lines[0]
