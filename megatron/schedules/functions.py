"""Learning-rate schedules as pure functions of the step (math only; docs/design.md §2).

Each function returns the multiplier on eta_max (``--lr``) at optimizer step ``step`` (counted
from 0), in ``[min_ratio, 1]`` after warmup, with ``min_ratio = eta_min / eta_max``. Warmup is
the Megatron form ``step / warmup_steps`` (0 at step 0). ``decay_steps`` (S) is the step at which
the decay ends, counted from 0 like ``step`` and including the warmup. Lengths may be real
(``--lr-warmup-fraction 0.0333`` of 1000 steps is W = 33.3), as in Megatron.
"""

import math


def warmup(step: int, warmup_steps: float) -> float:
    """Linear warmup multiplier ``step / W`` for ``step < W``, else 1."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    return 1.0


def _progress(step: int, warmup_steps: int, decay_steps: int) -> float:
    """r = (s - W) / (S - W), clipped to [0, 1]; 1 when the decay has no length."""
    if decay_steps <= warmup_steps:
        return 1.0
    return min(1.0, max(0.0, (step - warmup_steps) / (decay_steps - warmup_steps)))


def constant(step: int, *, warmup_steps: int = 0) -> float:
    """Warmup, then eta_max forever.

    ::

        lr |  /‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾
           | /
           +--W--------------> step
    """
    return warmup(step, warmup_steps)


def linear(step: int, *, warmup_steps: int, decay_steps: int, min_ratio: float = 0.0) -> float:
    """Warmup, then a straight line from eta_max to eta_min at S.

    ::

        lr |  /\\
           | /   \\_______ eta_min
           +--W----S-----> step
    """
    if step < warmup_steps:
        return warmup(step, warmup_steps)
    r = _progress(step, warmup_steps, decay_steps)
    return min_ratio + (1.0 - min_ratio) * (1.0 - r)


def cosine(step: int, *, warmup_steps: int, decay_steps: int, min_ratio: float = 0.0) -> float:
    """Warmup, then half a cosine from eta_max to eta_min at S (Loshchilov & Hutter, 2017,
    https://arxiv.org/abs/1608.03983), constant eta_min afterwards.

    ::

        lr |  /‾‾\\
           | /    ‾‾\\______ eta_min
           +--W------S----> step
    """
    if step < warmup_steps:
        return warmup(step, warmup_steps)
    r = _progress(step, warmup_steps, decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * r))


def cooldown_fraction(x: float, shape: str) -> float:
    """Share of (eta_max - eta_min) left after fraction ``x`` of a cooldown (1 at 0, 0 at 1).

    Shapes (Hägele et al. 2024, https://arxiv.org/abs/2405.18392): ``1-sqrt`` (default),
    ``linear``, ``cosine``, ``square`` (1 - x^2) and ``exp`` (e^{-5x}, rescaled to end at 0).
    """
    x = min(1.0, max(0.0, x))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(x)
    if shape == "linear":
        return 1.0 - x
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * x))
    if shape == "square":
        return 1.0 - x * x
    if shape == "exp":
        return (math.exp(-5.0 * x) - math.exp(-5.0)) / (1.0 - math.exp(-5.0))
    raise ValueError(f"unknown cooldown shape {shape!r}")


COOLDOWN_SHAPES = ("1-sqrt", "linear", "cosine", "square", "exp")


def cooldown_shapes() -> tuple[str, ...]:
    """The ``--lr-cooldown-shape`` values."""
    return COOLDOWN_SHAPES


def wsd(
    step: int, *, warmup_steps: int, total_steps: int, cooldown_steps: int,
    min_ratio: float = 0.0, shape: str = "1-sqrt",
) -> float:
    """Warmup-stable-decay: eta_max until ``S - C``, then a cooldown of ``C`` steps to eta_min.

    ::

        lr |  /‾‾‾‾‾‾‾‾‾‾‾‾\\
           | /              \\__ eta_min
           +--W--------S-C---S-> step
    """
    if step < warmup_steps:
        return warmup(step, warmup_steps)
    start = total_steps - cooldown_steps
    if step < start:
        return 1.0
    if step >= total_steps or cooldown_steps <= 0:
        return min_ratio
    return min_ratio + (1.0 - min_ratio) * cooldown_fraction((step - start) / cooldown_steps, shape)


def inverse_square_root(
    step: int, *, warmup_steps: float, min_ratio: float = 0.0, decay_steps: float | None = None
) -> float:
    """Warmup, then ``sqrt(W) / sqrt(s)`` (Vaswani et al., 2017), floored at eta_min; eta_min
    after ``decay_steps`` (``--lr-decay-iters``), as Megatron does for every decaying style.

    ::

        lr |  /\\
           | /  ‾‾--.___
           +--W----------> step
    """
    if step < warmup_steps:
        return warmup(step, warmup_steps)
    if decay_steps is not None and step > decay_steps:
        return min_ratio
    w = max(warmup_steps, 1)
    return max(min_ratio, math.sqrt(w) / math.sqrt(max(step, w)))


def rsqrt_cooldown(
    step: int, *, warmup_steps: int, total_steps: int, cooldown_steps: int, min_ratio: float = 0.0
) -> float:
    """TiC-LM's rsqrt with cooldown: warmup ``(s+1)/W``, then eta_min + (eta_max - eta_min)
    sqrt(W / s) until ``S - C``, then linear to eta_min over the last ``C`` steps.

    ::

        lr |  /\\
           | /  ‾‾--..__
           |            \\_ eta_min
           +--W------S-C--S-> step
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    start = max(total_steps - cooldown_steps, warmup_steps)

    def rsqrt(s: int) -> float:
        return min_ratio + (1.0 - min_ratio) * math.sqrt(warmup_steps / max(s, warmup_steps))

    if step < start:
        return rsqrt(step)
    if step >= total_steps:
        return min_ratio
    top = rsqrt(start)
    return top + (min_ratio - top) * (step - start) / (total_steps - start)


def _infinite(step: int, warmup_steps: float, cooldown_steps: float, constant_steps: float,
              anneal_steps: float, const_ratio: float, min_ratio: float, cooldown,  # noqa: ANN001
              decay_steps: float | None) -> float:
    if step < warmup_steps:
        return warmup(step, warmup_steps)
    if decay_steps is not None and step > decay_steps:
        return min_ratio  # past --lr-decay-iters: eta_min, as Megatron does for every style
    s = step - warmup_steps
    if s < cooldown_steps:
        return cooldown(s / cooldown_steps)
    s -= cooldown_steps
    if anneal_steps <= 0 or s < constant_steps:
        return const_ratio
    n = min(s - constant_steps, anneal_steps)
    return const_ratio * (min_ratio / const_ratio) ** (n / anneal_steps)


def infinite_cosine(
    step: int, *, warmup_steps: float, cooldown_steps: float, constant_steps: float,
    anneal_steps: float, const_ratio: float, min_ratio: float, decay_steps: float | None = None,
) -> float:
    """Infinite cosine (Ibrahim et al. 2024, https://arxiv.org/abs/2403.08763): warmup, a cosine
    cooldown eta_max -> eta_const, constant eta_const, and an optional geometric anneal that
    ends exactly at eta_min. A later stage continues at eta_const with no rewarming. Past
    ``decay_steps`` (``--lr-decay-iters`` shorter than the run) eta_min, as in Megatron.

    ::

        lr |  /‾\\
           | /   ‾‾‾‾‾‾‾‾‾‾\\_ eta_min (optional anneal)
           +--W-Tcd-----Tc--A-> step
    """

    def cooldown(r: float) -> float:
        return const_ratio + (1.0 - const_ratio) * 0.5 * (1.0 + math.cos(math.pi * r))

    return _infinite(step, warmup_steps, cooldown_steps, constant_steps, anneal_steps,
                     const_ratio, min_ratio, cooldown, decay_steps)


def infinite_inv_sqrt(
    step: int, *, warmup_steps: float, cooldown_steps: float, constant_steps: float,
    anneal_steps: float, const_ratio: float, min_ratio: float, timescale: float = 10.0,
    decay_steps: float | None = None,
) -> float:
    """Infinite inverse-square-root (Ibrahim et al. 2024): as ``infinite_cosine`` with the
    cooldown ``eta_max - (eta_max - eta_const) h(r) / h(1)``, ``h(x) = 1/sqrt(1 + a x) - 1``,
    ``a = --timescale``.
    """

    def h(x: float) -> float:
        return 1.0 / math.sqrt(1.0 + timescale * x) - 1.0

    def cooldown(r: float) -> float:
        return 1.0 - (1.0 - const_ratio) * h(r) / h(1.0)

    return _infinite(step, warmup_steps, cooldown_steps, constant_steps, anneal_steps,
                     const_ratio, min_ratio, cooldown, decay_steps)


def lr_range(step: int, *, total_steps: int, start: float, end: float, base_lr: float) -> float:
    """The LR-finder ramp as a multiplier on ``base_lr``: eta_i = start (end / start)^(i / N)
    (Smith 2017, https://arxiv.org/abs/1506.01186), exponential from ``start`` to ``end``.
    """
    fraction = min(1.0, max(0.0, step / max(total_steps, 1)))
    return start * (end / start) ** fraction / base_lr
