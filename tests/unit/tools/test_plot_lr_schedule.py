"""tools/plot_lr_schedule.py draws the curve the run would follow, from the same functions."""

from __future__ import annotations

import pytest

from tools.plot_lr_schedule import main


def test_csv_and_png_follow_the_schedule(tmp_path):
    png, csv = tmp_path / "lr.png", tmp_path / "lr.csv"
    run = ["--mock-data", "--vocab-size", "64", "--train-iters", "100", "--lr", "1e-3", "--min-lr", "1e-4",
           "--lr-decay-style", "infinite-cosine", "--constant-lr", "5e-4", "--lr-warmup-iters", "10",
           "--lr-cooldown-fraction", "0.2", "--lr-constant-fraction", "0.5"]
    assert main(["--output", str(png), "--csv", str(csv), "--", *run]) == 0
    rows = [line.split(",") for line in csv.read_text().splitlines()[1:]]
    lrs = [float(lr) for _, lr in rows]
    assert len(lrs) == 101 and lrs[0] == 0.0 and lrs[10] == pytest.approx(1e-3)
    assert lrs[30] == pytest.approx(5e-4) and lrs[79] == pytest.approx(5e-4)
    assert lrs[100] == pytest.approx(1e-4)
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_bad_flags_exit_2_naming_the_flag(tmp_path, capsys):
    assert main(["--output", str(tmp_path / "x.png"), "--", "--mock-data", "--vocab-size", "64",
                 "--train-iters", "10", "--lr-decay-style", "rsqrt"]) == 2
    assert "the rsqrt schedule needs a warmup" in capsys.readouterr().err
