"""LR meta-schedules against the spec's oracles (continual.md section 8, items 1-2)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from megatron.config.fields import ConfigError
from megatron.continual.meta_schedules import (
    META_SCHEDULES,
    StageContext,
    ar_peak_anchor,
    ar_peak_closed_form,
    get_meta_schedule,
)
from megatron.continual.plan import Method
from megatron.schedules.functions import rsqrt_cooldown
from megatron.schedules.registry import SCHEDULES

AR_PEAKS = [(0, 3.000000e-4), (1, 1.650000e-4), (2, 9.750000e-5), (3, 6.954058e-5), (4, 5.578271e-5),
            (5, 4.808657e-5), (10, 3.546845e-5), (112, 3.005217e-5)]


@pytest.mark.parametrize(("i", "peak"), AR_PEAKS)
def test_ar_closed_form_peaks(i, peak):
    assert ar_peak_closed_form(i, lr=3e-4, min_lr=3e-5) == pytest.approx(peak, abs=1e-9)


# TiC-LM's loop (training/continual_run.py): round 1 still warms up W (peak = closed form), the
# stage warmup is zeroed from round 2 on while the virtual warmup stays 2W (issue 29, item 1).
@pytest.mark.parametrize(("i", "peak"), [(0, 3e-4), (1, 1.65e-4), (2, 9.97134e-5), (3, 7.05525e-5)])
def test_ar_anchor_mode_with_warmup_first(i, peak):
    got = ar_peak_anchor(i, lr=3e-4, min_lr=3e-5, warmup_iters=50, stage_iters=1887, warmup_usage="first")
    assert got == pytest.approx(peak, abs=1e-9)


@pytest.mark.parametrize("i", [0, 1, 2, 5, 40])
def test_anchor_mode_with_warmup_all_is_the_closed_form(i):
    anchor = ar_peak_anchor(i, lr=3e-4, min_lr=3e-5, warmup_iters=50, stage_iters=1887, warmup_usage="all")
    assert anchor == pytest.approx(ar_peak_closed_form(i, lr=3e-4, min_lr=3e-5), abs=1e-15)


def _tic_lm_loop(rounds: int, usage: str, *, w: int, s: int, lr: float = 3e-4, end: float = 3e-5) -> list[float]:
    """An independent restatement of TiC-LM's per-round bookkeeping (read from its loop)."""
    def cosine_decay(step, total, warmup):
        if step < warmup:
            return lr * (step + 1) / warmup
        return (lr - end) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) + end
    config_warmup, warmup_init, peaks = w, 0, []
    for i in range(rounds):
        warmup_init = config_warmup if i == 0 else warmup_init + config_warmup
        peaks.append(cosine_decay(s * i + config_warmup, s * (i + 1), warmup_init))
        if usage == "none" or (usage == "first" and i > 0):
            config_warmup = 0
    return peaks


@pytest.mark.parametrize("usage", ["first", "none", "all"])
@pytest.mark.parametrize(("w", "s"), [(50, 1887), (200, 1000), (7, 13)])
def test_anchor_mode_follows_the_reference_loop(usage, w, s):
    want = _tic_lm_loop(6, usage, w=w, s=s)
    got = [ar_peak_anchor(i, lr=3e-4, min_lr=3e-5, warmup_iters=w, stage_iters=s, warmup_usage=usage)
           for i in range(6)]
    assert got == pytest.approx(want, abs=1e-15)


RSQRT = [(0, 2.0e-5), (49, 1.0e-3), (50, 1.0e-3), (100, 7.158936e-4), (1486, 2.079292e-4),
         (1487, 2.078694e-4), (1686, 1.193794e-4), (1886, 3.044467e-5), (1887, 3.0e-5)]


@pytest.mark.parametrize(("step", "lr"), RSQRT)
def test_rsqrt_stage_values(step, lr):
    # The rsqrt stage flags drive the trainer's registered rsqrt schedule: check that function.
    ctx = StageContext(index=3, method=Method(lr=1e-3, min_lr=3e-5, warmup_iters=50, schedule="rsqrt",
                                              lr_rsqrt_cooldown=400, warmup_usage="all"), stage_iters=(1887,) * 5)
    flags = get_meta_schedule("rsqrt").flags(ctx)
    assert flags["lr_decay_style"] == "rsqrt" and SCHEDULES["rsqrt"].fn is rsqrt_cooldown
    assert (flags["lr"], flags["lr_warmup_iters"], flags["train_iters"]) == (1e-3, 50, 1887)
    got = flags["lr"] * rsqrt_cooldown(step, warmup_steps=50, total_steps=1887, cooldown_steps=400,
                                       min_ratio=flags["min_lr"] / flags["lr"])
    assert got == pytest.approx(lr, abs=1e-9)


def _ctx(index, iters=(100, 100, 100), **method):
    return StageContext(index=index, method=Method(**method), stage_iters=iters)


def test_restarting_schedules_start_each_stage_at_step_zero():
    for i in range(3):
        flags = get_meta_schedule("cosine").flags(_ctx(i, lr=1e-3, warmup_iters=10, warmup_usage="first"))
        assert flags["train_iters"] == 100 and flags["lr"] == 1e-3
        assert flags["lr_warmup_iters"] == (10 if i == 0 else 0)
    ar = get_meta_schedule("ar-cosine").flags(_ctx(2, lr=3e-4, min_lr=3e-5, warmup_usage="all", warmup_iters=5))
    assert ar["lr"] == pytest.approx(9.75e-5, abs=1e-12) and ar["lr_warmup_iters"] == 5


def test_continuing_schedules_share_one_schedule_and_count_iterations_on():
    flags = [get_meta_schedule("wsd").flags(_ctx(i, iters=(100, 50, 150), warmup_iters=10,
                                                 warmup_usage="first", cooldown_fraction=0.2))
             for i in range(3)]
    assert [f["train_iters"] for f in flags] == [100, 150, 300]
    assert {f["lr_decay_iters"] for f in flags} == {300}
    assert {f["lr_warmup_iters"] for f in flags} == {10}
    assert all(f["lr_constant_plus_cooldown"] for f in flags)


def test_infinite_cosine_anneals_exactly_over_the_final_stage():
    from megatron.schedules import functions as F

    m = dict(lr=1e-3, min_lr=1e-5, constant_lr=3e-4, lr_cooldown_fraction=0.1, warmup_iters=10,
             warmup_usage="first", schedule="inf-cosine")
    flags = get_meta_schedule("inf-cosine").flags(_ctx(1, iters=(100, 100, 100), **m))
    total, cooldown = 300, 30
    constant = int(round(flags["lr_constant_fraction"] * total))
    anneal = total - 10 - cooldown - constant
    assert anneal == 100  # the final stage's iterations
    kw = dict(warmup_steps=10, cooldown_steps=cooldown, constant_steps=constant, anneal_steps=anneal,
              const_ratio=0.3, min_ratio=0.01)
    # Stage 1 (iterations 100-199) and stage 2's first step sit at eta_const: no rewarm, no anneal.
    assert {F.infinite_cosine(s, **kw) for s in range(100, 201)} == {0.3}
    assert F.infinite_cosine(300, **kw) == pytest.approx(0.01)


def test_a_cooldown_before_the_final_stage_is_refused():
    with pytest.raises(ConfigError, match="cooldown_fraction: .*before the final stage"):
        get_meta_schedule("wsd").flags(_ctx(0, iters=(100, 100, 100), cooldown_fraction=0.5))


def test_rsqrt_without_warmup_is_refused():
    with pytest.raises(ConfigError, match="rsqrt schedule needs a warmup in every stage"):
        get_meta_schedule("rsqrt").flags(_ctx(1, warmup_iters=10, warmup_usage="first", lr_rsqrt_cooldown=5))


def test_unknown_schedule_lists_the_known_ones():
    message = (r"^--lr-scheduler 'cosin': unknown meta-schedule \(the plan's method.schedule\); "
               r"known: ar-cosine, ")
    with pytest.raises(ConfigError, match=message):
        get_meta_schedule("cosin")
    assert {"cosine", "ar-cosine", "rsqrt", "constant", "schedule-free", "wsd", "inf-cosine",
            "inf-rsqrt", "cosine-continued"} <= set(META_SCHEDULES)
    assert dataclasses.is_dataclass(Method)
