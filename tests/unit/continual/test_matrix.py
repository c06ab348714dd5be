"""Forgetting-matrix metrics (spec oracle 5d), the bootstrap interval, the idempotent cell store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron.continual.matrix import (
    Cell,
    CellStore,
    bootstrap_ci,
    build_matrix,
    make_cell,
    metrics,
)

E = [[1.0, 2.0, 3.0], [1.5, 1.2, 2.5], [1.8, 1.4, 1.1]]


def test_spec_example_metrics():
    m = metrics(E)
    assert m["id"] == pytest.approx(1.1, abs=1e-12)
    assert m["backward"] == pytest.approx((1.5 + 1.8 + 1.4) / 3, abs=1e-12)
    assert m["forward"] == pytest.approx((2.0 + 3.0 + 2.5) / 3, abs=1e-12)


def test_normalizer_row_lowers_every_metric_by_its_value():
    plain, normalized = metrics(E), metrics(E, [0.5, 0.5, 0.5])
    for key in ("id", "backward", "forward"):
        assert normalized[key] == pytest.approx(plain[key] - 0.5, abs=1e-12)
    # A per-column normalizer subtracts column by column (backward uses columns 0, 0, 1).
    skewed = metrics(E, [0.1, 0.2, 0.3])
    assert skewed["backward"] == pytest.approx((1.4 + 1.7 + 1.2) / 3, abs=1e-12)


def _cells(matrix, rows, cols):
    return {(r, c): Cell(r, c, matrix[i][j], matrix[i][j] - 0.1, matrix[i][j] + 0.1, 4, 64)
            for i, r in enumerate(rows) for j, c in enumerate(cols)}


def test_rectangular_matrix_and_extra_sets():
    # Two finished stages of three, plus an extra evaluation set in no metric.
    stages = ["a", "b", "c"]
    cols = ["a", "b", "c", "wiki"]
    cells = _cells([[1.0, 2.0, 3.0, 9.0], [1.5, 1.2, 2.5, 9.0]], ["a", "b"], cols)
    m = build_matrix(cells, ["a", "b"], cols, stages)
    assert m["metrics"]["id"] == pytest.approx((1.0 + 1.2) / 2)
    assert m["metrics"]["backward"] == pytest.approx(1.5)
    assert m["metrics"]["forward"] == pytest.approx((2.0 + 3.0 + 2.5) / 3)
    assert "normalized_metrics" not in m
    cells.update({("normalizer", c): Cell("normalizer", c, 0.5, 0.4, 0.6, 4, 64) for c in cols})
    m = build_matrix(cells, ["a", "b"], cols, stages)
    assert m["normalized_metrics"]["forward"] == pytest.approx(m["metrics"]["forward"] - 0.5)
    assert m["normalized_loss"][1][0] == pytest.approx(1.0)


def test_bootstrap_interval_contains_the_mean_and_shrinks():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 200, 2000):
        losses = rng.normal(3.0, 0.5, size=n)
        tokens = rng.integers(10, 20, size=n)
        cell = make_cell("a", "b", losses, tokens)
        assert cell.ci_low < cell.loss < cell.ci_high
        assert cell.loss == pytest.approx((losses * tokens).sum() / tokens.sum())
        widths.append(cell.ci_high - cell.ci_low)
    assert widths[0] > 2 * widths[1] > 4 * widths[2]
    assert bootstrap_ci([1.0, 2.0, 3.0]) == bootstrap_ci([1.0, 2.0, 3.0])  # seeded
    with pytest.raises(ValueError, match="no sequences"):
        bootstrap_ci([])


def test_cell_store_appends_once_and_tolerates_a_cut_last_line(tmp_path):
    path = tmp_path / "cells.jsonl"
    store = CellStore(str(path))
    store.append(Cell("a", "b", 1.0, 0.9, 1.1, 3, 30))
    with open(path, "a") as f:
        f.write('{"checkpoint": "a", "eval_s')  # a write cut short by a crash
    again = CellStore(str(path))
    assert again.has("a", "b") and not again.has("a", "c")
    with open(path, "w") as f:
        f.write("not json\n" + json.dumps({"checkpoint": "a"}) + "\n")
    with pytest.raises(ValueError, match="cells.jsonl:1: not a matrix cell"):
        CellStore(str(path))
