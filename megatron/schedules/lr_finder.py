"""The LR range test (docs/design.md §3): a recorder that smooths the loss and stops on divergence,
and a pure ``suggest_lr``. The ramp itself is the ``lr-range`` schedule (functions.lr_range).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def suggest_lr(lrs: Sequence[float], smoothed: Sequence[float]) -> tuple[float, float]:
    """``(steepest, min_over_10)``: the LR where the smoothed loss falls fastest against log LR,
    and a tenth of the LR at the smoothed minimum.

    Raises:
        ValueError: Fewer than three points.
    """
    if len(lrs) < 3:
        raise ValueError("the LR finder needs at least 3 steps")
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    # The steepest descent before the minimum (past it the loss only rises).
    last = max(best, 2)
    slopes = [
        (smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
        for i in range(1, last)
    ]
    steepest = 1 + min(range(len(slopes)), key=slopes.__getitem__)
    return lrs[steepest], lrs[best] / 10.0


@dataclass
class LRFinderRecorder:
    """Records (lr, loss) per step, smooths with a debiased EMA, and flags divergence.

    Attributes:
        beta: EMA factor (0.98).
        divergence: Stop once the smoothed loss exceeds this multiple of the best one (4).
    """

    beta: float = 0.98
    divergence: float = 4.0
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    _avg: float = 0.0

    def record(self, lr: float, loss: float) -> bool:
        """Add a step; returns True when the loss diverged (stop the range test)."""
        self._avg = self.beta * self._avg + (1.0 - self.beta) * loss
        value = self._avg / (1.0 - self.beta ** (len(self.lrs) + 1))
        self.lrs.append(lr)
        self.losses.append(loss)
        self.smoothed.append(value)
        return not math.isfinite(value) or value > self.divergence * min(self.smoothed)

    def write(self, directory: str) -> tuple[float, float]:
        """Write ``lr_finder.csv`` and ``lr_finder.png`` into ``directory``; returns the suggestion."""
        import os

        steepest, min_over_10 = suggest_lr(self.lrs, self.smoothed)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "lr_finder.csv"), "w") as f:
            f.write("step,lr,loss,smoothed_loss\n")
            for i, (lr, loss, s) in enumerate(zip(self.lrs, self.losses, self.smoothed, strict=True)):
                f.write(f"{i},{lr!r},{loss!r},{s!r}\n")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(self.lrs, self.smoothed, label="smoothed loss")
        ax.plot(self.lrs, self.losses, alpha=0.3, label="loss")
        ax.axvline(steepest, color="tab:red", linestyle="--", label=f"steepest {steepest:.2e}")
        ax.axvline(min_over_10, color="tab:green", linestyle=":", label=f"min/10 {min_over_10:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(directory, "lr_finder.png"), dpi=120)
        plt.close(fig)
        return steepest, min_over_10
