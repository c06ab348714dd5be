"""tools/lr_transfer.py's analysis: the fitted optimum, the seed-averaged table, the CSV merge."""

import csv
import math

import pytest

from tools.lr_transfer import fitted_best_lr, main, markdown, mean_losses


def _parabola(center: float, lrs: list[float]) -> dict[float, float]:
    return {lr: 2.0 + 0.3 * (math.log10(lr) - math.log10(center)) ** 2 for lr in lrs}


@pytest.mark.parametrize("center", [1.5e-3, 7e-4, 4e-3])
def test_fit_recovers_the_vertex_of_an_exact_parabola(center):
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    assert fitted_best_lr(_parabola(center, lrs)) == pytest.approx(center, rel=1e-9)


def test_fit_refuses_an_optimum_at_the_grid_edge_and_ignores_nan():
    assert fitted_best_lr(_parabola(1e-5, [1e-4, 3e-4, 1e-3])) is None
    losses = _parabola(1e-3, [3e-4, 1e-3, 3e-3])
    losses[1e-2] = float("nan")
    assert fitted_best_lr(losses) == pytest.approx(1e-3, rel=1e-9)


def test_table_is_the_mean_over_seeds_with_the_best_in_bold():
    runs = [("sp", 64, 1e-3, 1, 2.0), ("sp", 64, 1e-3, 2, 2.2), ("sp", 64, 3e-3, 1, 2.3), ("sp", 64, 3e-3, 2, 2.5)]
    assert mean_losses(runs) == {("sp", 64): {1e-3: pytest.approx(2.1), 3e-3: pytest.approx(2.4)}}
    row = markdown(runs, [1e-3, 3e-3])[2]
    assert row == "| sp | 64 | **2.100** | 2.400 | 0.001 | edge |"


def test_from_csv_merges_files_without_training(tmp_path, capsys):
    paths = []
    for seed, shift in ((1, 0.0), (2, 0.2)):
        path = tmp_path / f"s{seed}.csv"
        with open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["preset", "width", "lr", "seed", "valid_loss"])
            for lr, loss in _parabola(1e-3, [1e-4, 1e-3, 1e-2]).items():
                out.writerow(["mup", 128, lr, seed, loss + shift])
        paths.append(str(path))
    assert main(["--from-csv", *paths, "--out", str(tmp_path / "out")]) == 0
    assert "| mup | 128 | 2.400 | **2.100** | 2.400 | 0.001 | 0.001 |" in capsys.readouterr().out
    assert (tmp_path / "out" / "lr_transfer.png").stat().st_size > 0
