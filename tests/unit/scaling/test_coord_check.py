"""Coordinate checks (mup.md section 4.3/4.4), thresholds calibrated once on a 2-core CPU.

Width (widths 32/64/128/256, 2 layers, head dim 16, seq 32, batch 8 of Shakespeare bytes, vocab
256, AdamW lr 1e-2, 5 steps, 2 seeds), slope of log l1 vs log width at step 5, measured:
  mup:      attention -0.02, mlp -0.03, last_block -0.02, logits +0.03  (1 seed: up to -0.14)
  standard: attention +1.80, mlp +1.77, last_block +1.71, logits +0.79
Asserted: |mup slope| <= 0.25 for each; standard >= 1.0 on attention/mlp/last_block and
standard logits >= mup logits + 0.3.

Depth (width 64, depths 2/4/8, base 2, lr 1e-3, 5 steps, 2 seeds), last-block slope vs log depth:
  completep -0.23 (1 seed; -0.12 over depths 2..16 and 3 seeds); residual multiplier off
  (muP with the 1/sqrt(2L) init dropped) +0.90. Asserted: completep in [-0.35, 0.25]; the
  difference >= 0.5.
"""

from __future__ import annotations

import math

import pytest
import torch

from megatron.scaling.coord_check import ActivationRecorder, CoordRow, fit_slope, fit_slopes
from tools.coord_check import main, recipe_flags, shakespeare_batch


def test_fit_slope_recovers_a_power_law():
    widths = [32, 64, 128, 256]
    assert fit_slope(widths, [3.0 * w**0.5 for w in widths]) == pytest.approx(0.5, abs=1e-12)
    rows = [CoordRow(w, 2, s, 1, f"layers.{k}.mlp", float(w) * (1 + s)) for w in widths
            for s in range(2) for k in range(2)]  # fmt: skip
    assert fit_slopes(rows) == {("mlp", 1): pytest.approx(1.0)}


def test_recorder_sees_every_block_and_the_logits(dist_world1):
    from megatron.model.gpt import GPTModel
    from tests.helpers import tiny_plan

    for untie in ((), ("--untie-embeddings-and-output-weights",)):
        model = GPTModel(tiny_plan("--train-iters", "1", *untie).model)
        recorder = ActivationRecorder(model)
        tokens = torch.randint(0, 64, (2, 16))
        with torch.no_grad():
            logits = model(tokens)
        values = recorder.collect()
        assert sorted(values) == ["embedding", "last_block", "layers.0.attention", "layers.0.mlp",
                                  "layers.1.attention", "layers.1.mlp", "logits"]  # fmt: skip
        assert values["logits"] == pytest.approx(logits.abs().mean().item(), rel=1e-6)
        recorder.remove()


def _slopes(dist_world1, widths, depths, recipe, axis, **kw):
    from megatron.scaling.coord_check import run_coord_check

    base_w, base_d = min(widths), min(depths)
    rows = run_coord_check(widths, depths, recipe_flags(recipe, base_w, base_d),
                           shakespeare_batch(8, 32), **kw)  # fmt: skip
    return {hook: v for (hook, step), v in fit_slopes(rows, axis).items() if step == kw["steps"]}


@pytest.mark.slow
def test_width_coord_check_flat_under_mup_growing_under_standard(dist_world1):
    widths = [32, 64, 128, 256]
    mup = _slopes(dist_world1, widths, [2], "mup", "width", steps=5, seeds=2, lr=1e-2)
    sp = _slopes(dist_world1, widths, [2], "none", "width", steps=5, seeds=2, lr=1e-2)
    for hook in ("attention", "mlp", "last_block", "logits"):
        assert abs(mup[hook]) <= 0.25, (hook, mup)
    for hook in ("attention", "mlp", "last_block"):
        assert sp[hook] >= 1.0, (hook, sp)
    assert sp["logits"] >= mup["logits"] + 0.3


@pytest.mark.slow
def test_depth_coord_check_flat_under_completep(dist_world1):
    depths = [2, 4, 8]
    cp = _slopes(dist_world1, [64], depths, "completep", "depth", steps=5, seeds=2, lr=1e-3)
    off = _slopes(dist_world1, [64], depths, "no_residual", "depth", steps=5, seeds=2, lr=1e-3)
    assert -0.35 <= cp["last_block"] <= 0.25, cp
    assert off["last_block"] - cp["last_block"] >= 0.5, (cp, off)


def test_tool_writes_csv_plot_and_slopes(tmp_path, capsys):
    out = tmp_path / "cc"
    assert main(["--widths", "16,32", "--head-dim", "8", "--steps", "2", "--seeds", "1",
                 "--seq", "8", "--batch", "2", "--out", str(out)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "slope of log l1 vs log width" in text and "mup" in text and "logits" in text
    lines = (out / "coord_check.csv").read_text().splitlines()
    assert lines[0] == "recipe,width,depth,seed,step,hook,l1"
    # 2 recipes x 2 widths x 1 seed x 2 steps x 7 hooks (2 layers)
    assert len(lines) - 1 == 2 * 2 * 2 * 7
    assert all(math.isfinite(float(line.split(",")[-1])) for line in lines[1:])
    assert (out / "coord_check.png").stat().st_size > 10_000
