"""WSD, inverse-sqrt, rsqrt-with-cooldown and the infinite schedules: values, joins, end values."""

from __future__ import annotations

import math

import pytest

from megatron.config import ConfigError
from megatron.schedules import functions as F
from megatron.schedules.registry import build_schedule_fn
from tests.helpers import tiny_plan


@pytest.mark.parametrize(
    ("shape", "x", "expected"),
    [("1-sqrt", 0.25, 0.5), ("linear", 0.25, 0.75), ("cosine", 0.5, 0.5), ("square", 0.5, 0.75),
     ("exp", 1.0, 0.0), ("exp", 0.0, 1.0)],
)
def test_cooldown_shapes(shape, x, expected):
    assert F.cooldown_fraction(x, shape) == pytest.approx(expected)


def test_wsd_table():
    kw = {"warmup_steps": 10, "total_steps": 100, "cooldown_steps": 20, "min_ratio": 0.1}
    assert F.wsd(0, **kw) == 0.0 and F.wsd(5, **kw) == 0.5
    assert F.wsd(10, **kw) == 1.0 and F.wsd(80, **kw) == 1.0  # stable until S - C
    assert F.wsd(85, **kw) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.25)))
    assert F.wsd(100, **kw) == 0.1 and F.wsd(150, **kw) == 0.1  # exact end value


def test_inverse_square_root_and_rsqrt_tables():
    assert F.inverse_square_root(400, warmup_steps=100) == pytest.approx(0.5)
    assert F.inverse_square_root(10**8, warmup_steps=100, min_ratio=0.01) == 0.01
    kw = {"warmup_steps": 10, "total_steps": 100, "cooldown_steps": 20, "min_ratio": 0.0}
    assert F.rsqrt_cooldown(0, **kw) == pytest.approx(0.1)  # (s + 1) / W
    assert F.rsqrt_cooldown(40, **kw) == pytest.approx(math.sqrt(10 / 40))
    top = math.sqrt(10 / 80)
    assert F.rsqrt_cooldown(90, **kw) == pytest.approx(top / 2)  # halfway down the linear cooldown
    assert F.rsqrt_cooldown(100, **kw) == 0.0


def test_infinite_schedules_phases_and_exact_end():
    kw = {"warmup_steps": 10, "cooldown_steps": 20, "constant_steps": 50, "anneal_steps": 20,
          "const_ratio": 0.5, "min_ratio": 0.05}
    for fn in (F.infinite_cosine, F.infinite_inv_sqrt):
        assert fn(10, **kw) == pytest.approx(1.0)
        assert fn(30, **kw) == pytest.approx(0.5) and fn(79, **kw) == 0.5
        assert fn(90, **kw) == pytest.approx(0.5 * (0.05 / 0.5) ** 0.5)  # geometric anneal
        assert fn(100, **kw) == pytest.approx(0.05) and fn(200, **kw) == pytest.approx(0.05)
    assert F.infinite_cosine(20, **kw) == pytest.approx(0.75)
    forever = {**kw, "anneal_steps": 0}
    assert F.infinite_cosine(10**6, **forever) == 0.5  # no anneal: eta_const forever


@pytest.mark.parametrize(
    "flags",
    [
        ["--lr-decay-style", "constant", "--lr-constant-plus-cooldown", "--lr-warmup-iters", "10"],
        ["--lr-decay-style", "inverse-square-root", "--lr-warmup-iters", "10"],
        ["--lr-decay-style", "rsqrt", "--lr-warmup-iters", "10", "--lr-rsqrt-cooldown", "30"],
        ["--lr-decay-style", "infinite-cosine", "--constant-lr", "1e-3", "--min-lr", "1e-4",
         "--lr-constant-fraction", "0.5", "--lr-warmup-iters", "10"],
        ["--lr-decay-style", "infinite-inv-square-root", "--constant-lr", "1e-3", "--min-lr", "1e-4",
         "--lr-constant-fraction", "0.5", "--lr-warmup-iters", "10"],
    ],
    ids=["wsd", "inverse-sqrt", "rsqrt", "infinite-cosine", "infinite-inv-sqrt"],
)
def test_every_style_is_continuous_and_token_form_agrees(flags):
    fn, _ = build_schedule_fn(tiny_plan(*flags, "--train-iters", "200", "--lr", "3e-3"))
    values = [fn(s) for s in range(260)]
    # Continuity at every phase join after warmup: the pieces meet (left limit == value).
    assert max(abs(fn(s - 1e-9) - fn(s)) for s in range(11, 260)) < 1e-4
    assert min(values[10:]) >= 0.0 and max(values) <= 1.0 + 1e-12
    # --train-tokens / --lr-warmup-tokens give the same curve as iterations (2 x 16 tokens per step).
    token_flags = [f if f != "--lr-warmup-iters" else "--lr-warmup-tokens" for f in flags]
    token_flags = [str(10 * 32) if prev == "--lr-warmup-tokens" else f for prev, f in zip(["", *token_flags], token_flags, strict=False)]
    fn_tokens, _ = build_schedule_fn(tiny_plan(*token_flags, "--train-tokens", str(200 * 32), "--lr", "3e-3"))
    assert [fn_tokens(s) for s in range(260)] == values


def test_bad_combinations_name_the_flag():
    with pytest.raises(ConfigError, match="--lr-constant-plus-cooldown: needs --lr-decay-style constant"):
        tiny_plan("--train-iters", "10", "--lr-constant-plus-cooldown")
    with pytest.raises(ConfigError, match="--constant-lr: required"):
        tiny_plan("--train-iters", "10", "--lr-decay-style", "infinite-cosine")
    with pytest.raises(ConfigError, match="the rsqrt schedule needs a warmup"):
        tiny_plan("--train-iters", "10", "--lr-decay-style", "rsqrt")
    with pytest.raises(ConfigError, match="--lr-cooldown-shape: unknown shape"):
        tiny_plan("--train-iters", "10", "--lr-cooldown-shape", "zigzag")
