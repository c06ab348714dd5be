"""Scaling-law fits: the datablations constants through our fit code reproduce the published law
values; fits of points drawn from known constants recover them."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from megatron.experiments import scaling_fit as sf
from utils import data_constrained_law as dcl

pytest.importorskip("scipy")

DATABLATIONS = {"a": 6.255414, "b": 7.3049974, "e": 0.6254804, "alpha": 0.3526596, "beta": 0.3526596,
                "rd_star": 15.387756, "rn_star": 5.309743}
CHINCHILLA = {"a": math.log(406.4), "b": math.log(410.7), "e": math.log(1.69), "alpha": 0.34, "beta": 0.28}


def test_datablations_constants_through_the_fit_code_give_the_published_values():
    n, d, u = np.array([6.34e9, 8.67e9]), np.array([242e9, 178e9]), np.array([25e9, 25e9])
    got = sf.predict_data_constrained(DATABLATIONS, n, d, u)
    assert got[0] == pytest.approx(2.2256440889984477, abs=1e-12)
    assert got[1] == pytest.approx(2.2269634075087867, abs=1e-12)
    # ... and agree with utils/data_constrained_law.py everywhere, repeated data or not.
    for n1, d1, u1 in [(1e6, 1e9, 1e9), (1e9, 1e12, 1e10), (3e8, 2e9, 1e8)]:
        ours = float(sf.predict_data_constrained(DATABLATIONS, n1, d1, u1))
        assert ours == pytest.approx(dcl.loss(n1, d1, u1), abs=1e-12)


def test_optimal_allocation_matches_the_law_minimum_on_an_isoflop_curve():
    c = 1e21
    n_opt, d_opt = sf.optimal_allocation(CHINCHILLA, c)
    assert 6 * n_opt * d_opt == pytest.approx(c, rel=1e-12)
    grid = np.logspace(8, 12, 20001)
    best = grid[np.argmin(sf.predict_chinchilla(CHINCHILLA, grid, c / (6 * grid)))]
    assert best == pytest.approx(float(n_opt), rel=1e-3)
    # datablations' N_opt(D) = (D G)^(beta/alpha) G with alpha = beta is the same allocation.
    assert float(sf.effective_params(1e12, 25e9, DATABLATIONS)) < 1e12  # excess parameters lose value


def _points(params, noise, seed, size=7):
    rng = np.random.default_rng(seed)
    n = np.repeat(np.logspace(7, 9.5, size), size)
    d = np.tile(np.logspace(9, 11.5, size), size)
    loss = sf.predict_chinchilla(params, n, d) * np.exp(rng.normal(0, noise, n.size))
    return n, d, loss


def test_noise_free_points_give_back_their_constants():
    n, d, loss = _points(CHINCHILLA, 0.0, 0, size=5)
    starts = sf.grid_starts({"a": (5.0,), "b": (5.0,), "e": (0.0,), "alpha": (0.5,), "beta": (0.5,)})
    fit = sf.fit_chinchilla(n, d, loss, starts=starts)
    for k, v in CHINCHILLA.items():
        assert fit.params[k] == pytest.approx(v, abs=2e-4), k


@pytest.mark.slow
def test_noisy_points_recover_the_constants_within_their_bootstrap_intervals():
    n, d, loss = _points(CHINCHILLA, 0.002, 3)
    fit = sf.bootstrap(sf.fit_chinchilla, [n, d, loss], sf.fit_chinchilla(n, d, loss), samples=40, seed=1)
    for k, v in CHINCHILLA.items():
        low, high = fit.intervals[k]
        assert low <= v <= high, (k, v, low, high)
        assert high - low < 0.6 * abs(v) + 0.2, k  # informative, not a catch-all interval


def test_data_constrained_fit_recovers_the_repetition_constants():
    truth = {**CHINCHILLA, "rd_star": 15.0, "rn_star": 5.0}
    # Single-epoch runs (U = D) with N below N_opt(D), where N' = N and the law is Chinchilla's.
    n1, d1 = np.repeat(np.logspace(6, 7.5, 4), 4), np.tile(np.logspace(9, 11.5, 4), 4)
    assert np.all(sf.effective_params(n1, d1, truth) == n1)
    # Repeated runs: 2 to 100 epochs of U = 1e9 at two sizes around N_opt(U) = 4.4e7.
    n2 = np.repeat([3e7, 1e8], 6)
    u2 = np.full(12, 1e9)
    d2 = u2 * np.tile([2.0, 4.0, 10.0, 20.0, 40.0, 100.0], 2)
    n, d, u = np.r_[n1, n2], np.r_[d1, d2], np.r_[d1, u2]
    starts = sf.grid_starts({"a": (5.0,), "b": (5.0,), "e": (0.0,), "alpha": (0.5,), "beta": (0.5,)})
    fit = sf.fit_data_constrained(n, d, u, sf.predict_data_constrained(truth, n, d, u), starts=starts)
    assert fit.params["rd_star"] == pytest.approx(15.0, rel=1e-3)
    assert fit.params["rn_star"] == pytest.approx(5.0, rel=1e-2)


def test_cli_prints_the_fit_and_allocation(tmp_path, capsys):
    from utils.fit_scaling_law import main

    n, d, loss = _points(CHINCHILLA, 0.0, 0, size=4)
    path = tmp_path / "sweep.csv"
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["run", "state", "num_parameters", "tokens", "final_valid_loss", "flops_budget"])
        out.writerows([f"r{i}", "done", int(a), int(b), repr(float(c)), ""] for i, (a, b, c) in enumerate(zip(n, d, loss)))
    assert main(["--runs", str(path), "--bootstrap", "0", "--flops", "1e21", "--init-grid", "single"]) == 0
    text = capsys.readouterr().out
    assert "alpha = 0.34" in text and "C = 1e+21: N_opt" in text
    assert (tmp_path / "fit.png").exists() and (tmp_path / "fit.json").exists()
    assert main(["--runs", str(tmp_path / "missing.csv")]) == 2
