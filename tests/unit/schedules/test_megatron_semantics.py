"""Same flag, same meaning: our schedules step by step against Megatron's own schedulers (issue 29,
items 2-3): megatron-core's ``OptimizerParamScheduler`` (installed) for the classic styles, and a
faithful restatement of the argonne-lcf fork's scheduler for the infinite and constant+cooldown
styles. Megatron counts samples (``step(increment=global_batch)``), so its lengths are real-valued
in steps: ``--lr-warmup-fraction 0.0333`` of 1000 iterations is 33.3 warmup steps."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron.schedules.registry import build_schedule_fn, cooldown_start
from tests.helpers import tiny_plan

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--train-iters", "--lr", "--min-lr", "--lr-decay-style", "--lr-decay-iters",
    "--lr-warmup-iters", "--lr-warmup-fraction", "--lr-constant-plus-cooldown", "--num-layers",
    "--hidden-size", "--num-attention-heads", "--seq-length", "--mock-data", "--vocab-size",
    "--micro-batch-size", "--save", "--load", "--exit-interval", "--eval-interval", "--eval-iters",
    "--log-interval")

LR, MIN_LR = 3e-4, 3e-5


def ours(*flags: str) -> tuple[list[float], int]:
    plan = tiny_plan("--lr", str(LR), "--min-lr", str(MIN_LR), *flags)
    fn, _ = build_schedule_fn(plan)
    return [LR * fn(s) for s in range(plan.train_iters + 50)], plan.global_batch_size


def megatron_core(style: str, *, decay_iters: int, gbs: int, steps: int, warmup_iters: int = 0,
                  warmup_fraction: float | None = None) -> list[float]:
    """megatron-core's scheduler driven as Megatron-LM's training loop drives it (sample counts)."""
    decay = decay_iters * gbs
    warmup = warmup_fraction * decay if warmup_fraction is not None else warmup_iters * gbs
    opt = SimpleNamespace(param_groups=[{}])
    sched = OptimizerParamScheduler(opt, init_lr=0.0, max_lr=LR, min_lr=MIN_LR, lr_warmup_steps=warmup,
                                    lr_decay_steps=decay, lr_decay_style=style, start_wd=0.0, end_wd=0.0,
                                    wd_incr_steps=decay, wd_incr_style="constant")
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(gbs)
    return lrs


@pytest.mark.parametrize("style", ["inverse-square-root", "cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup", [("--lr-warmup-iters", "50"), ("--lr-warmup-fraction", "0.0333")])
def test_decay_shorter_than_the_run_gives_min_lr_like_megatron_core(style, warmup):
    got, gbs = ours("--lr-decay-style", style, "--lr-decay-iters", "800", "--train-iters", "1000", *warmup)
    kw = ({"warmup_iters": 50} if warmup[0] == "--lr-warmup-iters" else {"warmup_fraction": 0.0333})
    want = megatron_core(style, decay_iters=800, gbs=gbs, steps=len(got), **kw)
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    if style == "inverse-square-root" and warmup[0] == "--lr-warmup-iters":  # the example: step 801 is eta_min, not 7.4953e-5
        assert got[801] == pytest.approx(MIN_LR, rel=1e-12) and got[800] == pytest.approx(LR * math.sqrt(50 / 800), rel=1e-12)


def test_fractional_warmup_is_real_valued():
    got, gbs = ours("--lr-decay-style", "cosine", "--train-iters", "1000", "--lr-warmup-fraction", "0.0333")
    assert tiny_plan("--train-iters", "1000", "--lr-warmup-fraction", "0.0333").warmup_steps == pytest.approx(33.3)
    assert got[23] == pytest.approx(LR * 23 / 33.3, rel=1e-12)  # not 23 / 33 (9.1e-3 off)
    assert got == pytest.approx(megatron_core("cosine", decay_iters=1000, gbs=gbs, steps=len(got),
                                              warmup_fraction=0.0333), rel=1e-12, abs=0)


class ArgonneScheduler:
    """The argonne-lcf Megatron-DeepSpeed scheduler's iteration/sample-based LR (restated from its
    ``megatron/optimizer_param_scheduler.py`` and ``training.get_optimizer_param_scheduler``):
    lengths are ``fraction * decay samples`` (no rounding), the constant+cooldown cooldown is
    ``int(frac * decay samples)``, and every step past the decay length is ``min_lr``."""

    def __init__(self, style: str, *, train_iters: int, gbs: int, decay_iters: int | None = None,
                 warmup_iters: int = 0, warmup_fraction: float | None = None, constant_lr: float = 0.0,
                 cooldown_fraction: float = 0.65, constant_fraction: float = 0.001, timescale: float = 10.0,
                 plus_cooldown: bool = False, plus_cooldown_frac: float = 0.05):
        self.style, self.gbs, self.timescale = style, gbs, timescale
        self.decay = (decay_iters or train_iters) * gbs
        self.warmup = warmup_fraction * self.decay if warmup_fraction is not None else warmup_iters * gbs
        self.constant = constant_fraction * self.decay
        self.cooldown = cooldown_fraction * self.decay
        self.plus_cooldown = int(plus_cooldown_frac * self.decay) if plus_cooldown else None
        self.constant_lr = constant_lr

    def lr(self, step: int) -> float:  # noqa: PLR0911 (one return per phase, as theirs)
        n = step * self.gbs
        if self.warmup > 0 and n <= self.warmup:
            return LR * n / self.warmup
        if self.style == "constant":
            if self.plus_cooldown is None:
                return LR
            n_, total = n - self.warmup, self.decay - self.warmup
            if n_ >= total:
                return MIN_LR
            if n_ < total - self.plus_cooldown:
                return LR
            ratio = min(1.0, max(0.0, (n_ - (total - self.plus_cooldown)) / self.plus_cooldown))
            return MIN_LR + (LR - MIN_LR) * (1.0 - math.sqrt(ratio))
        if n > self.decay:
            return MIN_LR
        delta = LR - self.constant_lr
        n_ = n - self.warmup
        if n_ <= self.cooldown:
            r = n_ / self.cooldown
            if self.style == "infinite-cosine":
                return max(self.constant_lr + delta * 0.5 * (math.cos(math.pi * r) + 1.0), MIN_LR)

            def inv_f(t: float) -> float:
                return 1 / math.sqrt(1 + self.timescale * t) - 1

            return max(LR - delta * inv_f(r) / inv_f(1), MIN_LR)
        n_ -= self.cooldown
        if n_ <= self.constant:
            return max(self.constant_lr, MIN_LR)
        end = self.decay - self.warmup - self.cooldown - self.constant
        factor = -math.log(MIN_LR / self.constant_lr) / end
        return max(self.constant_lr * math.exp(-factor * (n_ - self.constant)), MIN_LR)


INFINITE_CASES = {
    # --lr-decay-iters shorter than the run: eta_min from step 801 on, not eta_const.
    "decay-shorter": (dict(train_iters=1000, decay_iters=800, warmup_iters=50, cooldown_fraction=0.1,
                           constant_fraction=0.8),
                      ["--train-iters", "1000", "--lr-decay-iters", "800", "--lr-warmup-iters", "50",
                       "--lr-cooldown-fraction", "0.1", "--lr-constant-fraction", "0.8"]),
    # Real-valued phases: cooldown 123.4, constant 345.6, warmup 33.3 steps.
    "fractional": (dict(train_iters=1000, warmup_fraction=0.0333, cooldown_fraction=0.1234,
                        constant_fraction=0.3456),
                   ["--train-iters", "1000", "--lr-warmup-fraction", "0.0333", "--lr-cooldown-fraction",
                    "0.1234", "--lr-constant-fraction", "0.3456"]),
}


@pytest.mark.parametrize("style", ["infinite-cosine", "infinite-inv-square-root"])
@pytest.mark.parametrize("case", sorted(INFINITE_CASES))
def test_infinite_schedules_equal_the_argonne_scheduler(style, case):
    theirs_kw, flags = INFINITE_CASES[case]
    got, gbs = ours("--lr-decay-style", style, "--constant-lr", "1e-4", *flags)
    ref = ArgonneScheduler(style, gbs=gbs, constant_lr=1e-4, **theirs_kw)
    assert got == pytest.approx([ref.lr(s) for s in range(len(got))], rel=1e-12, abs=0)
    if case == "decay-shorter":
        assert got[790] > 1.01 * MIN_LR and got[801:] == pytest.approx([MIN_LR] * (len(got) - 801), rel=1e-12)


def test_infinite_constant_to_the_end_drops_to_min_lr_past_the_decay_length():
    got, _ = ours("--lr-decay-style", "infinite-cosine", "--constant-lr", "1e-4", "--train-iters", "1000",
                  "--lr-decay-iters", "800", "--lr-warmup-iters", "50")
    assert got[800] == pytest.approx(1e-4) and got[801] == got[999] == pytest.approx(MIN_LR, rel=1e-12)


@pytest.mark.parametrize("frac", ["0.05", "0.0337"])
def test_constant_plus_cooldown_equals_the_argonne_scheduler(frac):
    flags = ["--lr-decay-style", "constant", "--lr-constant-plus-cooldown", "--lr-constant-plus-cooldown-frac",
             frac, "--train-iters", "1000", "--lr-warmup-fraction", "0.0333"]
    got, gbs = ours(*flags)
    ref = ArgonneScheduler("constant", train_iters=1000, gbs=gbs, warmup_fraction=0.0333, plus_cooldown=True,
                           plus_cooldown_frac=float(frac))
    assert got == pytest.approx([ref.lr(s) for s in range(len(got))], rel=1e-12, abs=0)
    # The first step of the cooldown is whole even when the cooldown is not (33.5 steps at 0.0337).
    start = cooldown_start(tiny_plan(*flags).schedule_state)
    assert got[start - 1] == pytest.approx(LR, rel=1e-12) and (got[start] < LR or float(frac) * 1000 * gbs % gbs == 0)
