"""Learning-rate schedules as pure functions of the step (math only; SPEC section 2).

Each function returns the multiplier on eta_max (``--lr``) at optimizer step ``step`` (counted
from 0), in ``[min_ratio, 1]`` after warmup, with ``min_ratio = eta_min / eta_max``. Warmup is
the Megatron form ``step / warmup_steps`` (0 at step 0). ``decay_steps`` (S) is the step at which
the decay ends, counted from 0 like ``step`` and including the warmup.
"""

import math


def warmup(step: int, warmup_steps: int) -> float:
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
