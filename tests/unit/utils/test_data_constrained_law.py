"""utils/data_constrained_law.py against the datablations README values and the spec's D'/U
tables (docs/diffusion.md)."""

from __future__ import annotations

import math

import pytest

from utils.data_constrained_law import (
    LawConstants,
    effective_data,
    effective_params,
    epochs_as_good_as_fresh,
    epochs_until_repeats_stop_paying,
    loss,
    main,
    optimal_params,
)


def test_datablations_readme_values_to_1e_12():
    assert loss(6.34e9, 242e9, 25e9) == pytest.approx(2.2256440889984477, abs=1e-12)
    assert loss(8.67e9, 178e9, 25e9) == pytest.approx(2.2269634075087867, abs=1e-12)


def test_intermediates_of_the_first_readme_value():
    c = LawConstants()
    g = ((c.alpha * math.exp(c.a)) / (c.beta * math.exp(c.b))) ** (1 / (c.alpha + c.beta))
    assert g == pytest.approx(0.2258019, rel=1e-6)
    assert optimal_params(25e9) == pytest.approx(1.274663e9, rel=1e-6)
    # U_N = N_opt(U) < N, so R_N = N / U_N - 1 = 3.973864
    r_n = 6.34e9 / optimal_params(25e9) - 1
    assert r_n == pytest.approx(3.973864, rel=1e-6)
    base = optimal_params(25e9)
    assert effective_params(6.34e9, 25e9) == pytest.approx(
        base + base * c.rn_star * (1 - math.exp(-r_n / c.rn_star)), rel=1e-15)
    assert effective_data(242e9, 25e9, c.rd_star) / 25e9 == pytest.approx(7.633961, rel=1e-6)
    assert effective_params(1e6, 25e9) == 1e6  # below N_opt(U): no excess parameters


@pytest.mark.parametrize(
    ("rd_star", "expected"),
    [
        (15.387756, {2: 1.9682, 4: 3.7257, 10: 7.8141, 40: 15.1675, 100: 16.3630}),
        (500.0, {2: 1.9990, 4: 3.9910, 10: 9.9195, 40: 38.5178, 100: 90.8151}),
    ],
    ids=["ar", "diffusion"],
)
def test_effective_data_per_epoch(rd_star, expected):
    for epochs, ratio in expected.items():
        assert effective_data(epochs * 1e9, 1e9, rd_star) / 1e9 == pytest.approx(ratio, abs=5e-5)
    assert effective_data(0.5e9, 1e9, rd_star) == 1e9  # fewer tokens than U: no repeats


def test_epochs_before_repeats_stop_paying():
    # The papers' reading: AR uses repeats about as well as fresh data for ~4 epochs, diffusion ~100.
    assert epochs_as_good_as_fresh(15.387756) == 5  # D'/(E U): 4 -> 0.931, 5 -> 0.904, 6 -> 0.878
    assert 95 <= epochs_as_good_as_fresh(500.0) <= 115
    ar = epochs_until_repeats_stop_paying(15.387756)
    gain = [effective_data(e, 1, 15.387756) - effective_data(e - 1, 1, 15.387756) for e in (ar - 1, ar)]
    assert gain[0] >= 0.1 > gain[1]
    assert epochs_until_repeats_stop_paying(500.0) > 10 * ar


def test_cli_prints_the_loss_and_the_table(capsys):
    assert main(["--params", "6.34e9", "--tokens", "242e9", "--unique-tokens", "25e9"]) == 0
    out = capsys.readouterr().out
    assert "= 2.225644088998448" in out and "3.7257" in out
    assert main(["--params", "1e8", "--unique-tokens", "1e8", "--objective", "mdm", "--epochs", "100"]) == 0
    assert "90.8151" in capsys.readouterr().out
    assert main(["--params", "x", "--unique-tokens", "1"]) == 2
    assert "--params: 'x' is not a number" in capsys.readouterr().err
