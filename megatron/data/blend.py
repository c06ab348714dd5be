"""Blending datasets by weight: every prefix of the stream within one sample of the weights.

The order is Tijdeman's chairman-assignment sequence (R. Tijdeman, "The chairman assignment
problem", Discrete Mathematics 32, 1980): before sample ``n`` (1-based), dataset ``d`` has
``c_d`` samples; the eligible datasets are those with ``w_d * n - c_d >= s`` where
``s = 1 / (2 (D - 1))``, and among them the one with the earliest deadline
``(c_d + 1 - s) / w_d`` is chosen (ties: lower index). For every prefix ``n`` and dataset ``d``,
``|c_d(n) - w_d * n| <= 1 - s < 1``. (The greedy "largest deficit" rule used by Megatron can
drift past one sample with five or more datasets.)

Blending is two-level: samples go to corpora by corpus weight (the sum of its files' weights),
then each corpus's samples go to its files by their weights within the corpus. The order is a
pure function of the weights, so any prefix is the same whatever the run length; it is built in
chunks as the stream is read, or once into ``--data-cache-path`` and memory-mapped.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence

import numpy as np

from megatron.data.integrity import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1


class Chairman:
    """Tijdeman's sequence for ``weights``, produced incrementally from any state.

    Args:
        weights: Positive weights (normalized here).
        counts: Samples each dataset already has (resume point); default none.
    """

    def __init__(self, weights: Sequence[float], counts: Sequence[int] | None = None):
        w = np.asarray(weights, dtype=np.float64)
        if len(w) == 0 or np.any(w <= 0):
            raise ValueError(f"blend weights must be positive, got {list(weights)}")
        self.weights = (w / w.sum()).tolist()
        self.slack = 1.0 / (2 * (len(w) - 1)) if len(w) > 1 else 0.0
        self.counts = [int(c) for c in counts] if counts is not None else [0] * len(w)
        self.n = sum(self.counts)  # samples produced so far
        # The sequence's state is just the counts: every dataset waits for its release position.
        self._pending: list[tuple[int, int]] = [(self._release(d), d) for d in range(len(w))]
        heapq.heapify(self._pending)
        self._ready: list[tuple[float, int]] = []

    def _release(self, d: int) -> int:
        # First 1-based position n at which dataset d is eligible again: w n - c >= slack.
        w, c = self.weights[d], self.counts[d]
        n = max(1, math.ceil((c + self.slack) / w))
        while w * n - c < self.slack:
            n += 1
        while n > 1 and w * (n - 1) - c >= self.slack:
            n -= 1
        return n

    def take(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``size`` choices: ``(dataset index, index within that dataset)``."""
        choice = np.empty(size, dtype=np.int32)
        local = np.empty(size, dtype=np.int64)
        if len(self.weights) == 1:
            choice[:] = 0
            local[:] = np.arange(self.counts[0], self.counts[0] + size)
            self.n += size
            self.counts[0] += size
            return choice, local
        pending, ready, counts, weights, slack = (
            self._pending,
            self._ready,
            self.counts,
            self.weights,
            self.slack,
        )
        push, pop = heapq.heappush, heapq.heappop
        for i in range(size):
            n = self.n + i + 1
            while pending and pending[0][0] <= n:
                _, d = pop(pending)
                push(ready, ((counts[d] + 1 - slack) / weights[d], d))
            _, d = pop(ready)
            choice[i] = d
            local[i] = counts[d]
            counts[d] += 1
            push(pending, (self._release(d), d))
        self.n += size
        return choice, local


class BlendIndex:
    """Two-level blend order over a window ``[base, end)`` of the stream.

    Samples go to corpora by corpus weight, then to a corpus's files by their weights within
    it. The whole state at a position is the per-dataset sample counts there, so a window can
    start anywhere (resume) and drop its old entries (bounded memory on long runs).

    Args:
        weights: Per-dataset (file) weights.
        groups: Per-dataset group (corpus) label.
        counts: Per-dataset counts at the window's start (default: the stream's start).
    """

    def __init__(
        self, weights: Sequence[float], groups: Sequence[str], counts: Sequence[int] | None = None
    ):
        if len(weights) != len(groups):
            raise ValueError("one group label per weight")
        labels = list(dict.fromkeys(groups))
        self.members = [
            np.asarray([i for i, g in enumerate(groups) if g == label]) for label in labels
        ]
        start = (
            np.zeros(len(weights), dtype=np.int64)
            if counts is None
            else np.asarray(counts, np.int64)
        )
        if len(start) != len(weights):
            raise ValueError(f"{len(start)} counts for {len(weights)} datasets")
        w = np.asarray(weights, dtype=np.float64)
        self.top = Chairman(
            [w[m].sum() for m in self.members], [start[m].sum() for m in self.members]
        )
        self.inner = [Chairman(w[m], start[m]) for m in self.members]
        self.base = int(start.sum())
        self.base_counts = start
        self.dataset_index = np.empty(0, dtype=np.int32)
        self.sample_index = np.empty(0, dtype=np.int64)

    @property
    def end(self) -> int:
        """One past the last stream position built."""
        return self.base + len(self.dataset_index)

    def extend_to(self, end: int) -> None:
        """Build the entries up to stream position ``end``."""
        grow = end - self.end
        if grow <= 0:
            return
        group, _ = self.top.take(grow)
        dataset = np.empty(grow, dtype=np.int32)
        sample = np.empty(grow, dtype=np.int64)
        for g, members in enumerate(self.members):
            where = np.flatnonzero(group == g)
            if len(where):
                member, local = self.inner[g].take(len(where))
                dataset[where] = members[member]
                sample[where] = local
        self.dataset_index = np.concatenate([self.dataset_index, dataset])
        self.sample_index = np.concatenate([self.sample_index, sample])

    def counts_at(self, position: int) -> np.ndarray:
        """Per-dataset sample counts of the stream's first ``position`` samples."""
        if not self.base <= position <= self.end:
            raise IndexError(f"position {position} outside the window [{self.base}, {self.end}]")
        seen = np.bincount(
            self.dataset_index[: position - self.base], minlength=len(self.base_counts)
        )
        return self.base_counts + seen

    def drop_before(self, position: int) -> None:
        """Forget entries before ``position`` (they can no longer be looked up)."""
        position = min(max(position, self.base), self.end)
        self.base_counts = self.counts_at(position)
        cut = position - self.base
        self.dataset_index = self.dataset_index[cut:]
        self.sample_index = self.sample_index[cut:]
        self.base = position


def blend_indices(
    weights: Sequence[float], size: int, groups: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``size`` entries of the blend: ``(dataset index, index within the dataset)``."""
    index = BlendIndex(weights, groups if groups is not None else ["all"] * len(weights))
    index.extend_to(size)
    return index.dataset_index, index.sample_index


def cache_key(
    weights: Sequence[float], groups: Sequence[str], names: Sequence[str], size: int
) -> str:
    """Identifies a blend index: its inputs and the algorithm version."""
    blob = json.dumps(
        {
            "v": CACHE_VERSION,
            "w": [repr(float(x)) for x in weights],
            "g": list(groups),
            "names": list(names),
            "size": size,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_blend(
    cache_dir: str,
    weights: Sequence[float],
    groups: Sequence[str],
    names: Sequence[str],
    size: int,
    *,
    build: bool,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Load (memory-mapped) or build-and-save the first ``size`` blend entries.

    The index lives in ``{cache_dir}/blend-{key}/`` (two ``.npy`` files and ``inputs.json``),
    written under a temporary name and renamed when complete.

    Args:
        build: This rank builds a missing index (rank 0); the others only load, after a barrier.

    Returns:
        The arrays, or None when missing and ``build`` is False.
    """
    key = cache_key(weights, groups, names, size)
    path = os.path.join(cache_dir, f"blend-{key}")
    if not os.path.isdir(path):
        if not build:
            return None
        tmp = f"{path}.tmp-{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        dataset, sample = blend_indices(weights, size, groups)
        np.save(os.path.join(tmp, "dataset_index.npy"), dataset)
        np.save(os.path.join(tmp, "sample_index.npy"), sample)
        with open(os.path.join(tmp, "inputs.json"), "w") as f:
            json.dump(
                {
                    "datasets": list(names),
                    "groups": list(groups),
                    "weights": [float(x) for x in weights],
                    "samples": size,
                },
                f,
                indent=1,
            )
        try:
            os.rename(tmp, path)
        except OSError:  # another job finished the same index first
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("blend index of %d samples saved to %s", size, path)
    arrays = []
    for name in ("dataset_index.npy", "sample_index.npy"):
        file = os.path.join(path, name)
        try:
            arrays.append(np.load(file, mmap_mode="r"))
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"--data-cache-path: {file} is truncated or corrupt ({e}); delete "
                            f"{path} and it is rebuilt") from None
        if arrays[-1].ndim != 1 or len(arrays[-1]) < size:
            raise DataError(f"--data-cache-path: {file} holds {arrays[-1].shape} entries, fewer "
                            f"than {size}; delete {path} and it is rebuilt")
    return arrays[0], arrays[1]


class BlendedStream:
    """An endless stream of ``(dataset_id, tokens)`` mixing ``datasets`` by ``weights``.

    Reads move forward (a training run); the blend order is built in chunks ahead of them and
    forgotten behind them. ``seek`` starts the order at a checkpointed position in O(datasets).

    Args:
        datasets: Random-access sample sources (``SequenceDataset`` or alike).
        weights: Their weights.
        groups: Corpus label per dataset (two-level blending); default one group.
        index: A prebuilt ``(dataset_index, sample_index)`` prefix (from the cache).
    """

    CHUNK = 1 << 16
    KEEP = 1 << 20

    def __init__(
        self,
        datasets: Sequence,
        weights: Sequence[float],
        groups: Sequence[str] | None = None,
        index: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        if len(datasets) != len(weights):
            raise ValueError("one weight per dataset")
        self.datasets = list(datasets)
        self.weights = list(weights)
        self.groups = list(groups) if groups is not None else ["all"] * len(datasets)
        self._prebuilt = index
        self._window: BlendIndex | None = None

    def _new_window(self, position: int) -> BlendIndex:
        # Counts at ``position`` are known at the end of the prebuilt prefix or at 0; any other
        # start replays from there (only random access behind the window does that).
        counts = None
        if self._prebuilt is not None and position >= len(self._prebuilt[0]):
            counts = np.bincount(self._prebuilt[0], minlength=len(self.datasets))
        window = BlendIndex(self.weights, self.groups, counts)
        window.extend_to(position)
        window.drop_before(position)
        return window

    def _lookup(self, i: int) -> tuple[int, int]:
        if self._prebuilt is not None and i < len(self._prebuilt[0]):
            return int(self._prebuilt[0][i]), int(self._prebuilt[1][i])
        w = self._window
        if w is None or i < w.base:
            w = self._window = self._new_window(i)
        if i >= w.end:
            if i - w.base > 2 * self.KEEP:
                w.drop_before(i - self.KEEP)
            w.extend_to(max(i + 1, w.end + self.CHUNK))
        return int(w.dataset_index[i - w.base]), int(w.sample_index[i - w.base])

    def __getitem__(self, index: int) -> tuple[int, np.ndarray]:
        """``(dataset_id, tokens)`` of blended sample ``index``."""
        d, j = self._lookup(int(index))
        return d, self.datasets[d][j]

    def counts_at(self, position: int) -> np.ndarray:
        """Samples each dataset gives among the first ``position`` (the resume state)."""
        if self._prebuilt is not None and position <= len(self._prebuilt[0]):
            return np.bincount(self._prebuilt[0][:position], minlength=len(self.datasets))
        if position > 0:
            self._lookup(position - 1)
        w = self._window
        if w is None or not w.base <= position <= w.end:
            w = self._window = self._new_window(position)
        return w.counts_at(position)

    def seek(self, position: int, counts: Sequence[int]) -> None:
        """Continue at ``position`` whose per-dataset counts are ``counts`` (from a checkpoint)."""
        if len(counts) != len(self.datasets) or sum(counts) != position:
            raise ValueError(
                f"blend state of {len(counts)} datasets / {sum(counts)} samples does not fit "
                f"{len(self.datasets)} datasets at sample {position}"
            )
        if self._prebuilt is not None and position < len(self._prebuilt[0]):
            return
        self._window = BlendIndex(self.weights, self.groups, counts)
