"""Schedule functions: table-driven values, continuity, floor (docs/design.md §2)."""

from __future__ import annotations

import math

import pytest

from megatron.schedules import functions as F

W, S, M = 10, 110, 0.1


@pytest.mark.parametrize(
    ("fn", "step", "expected"),
    [
        (F.cosine, 0, 0.0),
        (F.cosine, 5, 0.5),
        (F.cosine, W, 1.0),
        (F.cosine, 60, M + (1 - M) * 0.5),
        (F.cosine, S, M),
        (F.cosine, S + 50, M),
        (F.linear, W, 1.0),
        (F.linear, 60, M + (1 - M) * 0.5),
        (F.linear, S, M),
        (F.linear, 10_000, M),
    ],
)
def test_decay_values(fn, step, expected):
    assert fn(step, warmup_steps=W, decay_steps=S, min_ratio=M) == pytest.approx(expected)


def test_constant():
    assert [F.constant(s, warmup_steps=4) for s in (0, 2, 4, 1000)] == [0.0, 0.5, 1.0, 1.0]
    assert F.constant(0) == 1.0


@pytest.mark.parametrize("fn", [F.cosine, F.linear])
def test_monotone_after_warmup_and_continuous_at_warmup_edge(fn):
    values = [fn(s, warmup_steps=W, decay_steps=S, min_ratio=M) for s in range(W, S + 1)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    # Warmup reaches (W-1)/W just before the edge, 1 at it: no jump beyond one warmup step.
    assert fn(W, warmup_steps=W, decay_steps=S, min_ratio=M) - fn(W - 1, warmup_steps=W, decay_steps=S, min_ratio=M) == pytest.approx(1 / W)


def test_no_warmup_and_zero_length_decay():
    assert F.cosine(0, warmup_steps=0, decay_steps=100) == 1.0
    assert F.cosine(5, warmup_steps=5, decay_steps=5, min_ratio=0.2) == 0.2
    assert math.isclose(F.cosine(50, warmup_steps=0, decay_steps=100), 0.5)
