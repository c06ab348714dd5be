"""Blending datasets by weight: a deterministic greedy interleave, resumable by index.

Sample ``i`` of the blend goes to the dataset whose count lags its target ``w_d * (i + 1)`` the
most, so the order is a pure function of the weights (not of the run length) and every prefix
of the stream follows the weights closely. ``(dataset, local index)`` pairs are built in
chunks as the stream is read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def blend_indices(weights: Sequence[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``size`` entries of the greedy interleave.

    Args:
        weights: Normalized dataset weights.
        size: Number of samples.

    Returns:
        ``(dataset_index, sample_index)``: which dataset sample ``i`` comes from, and its index
        within that dataset.
    """
    w = np.asarray(weights, dtype=np.float64)
    counts = np.zeros(len(w), dtype=np.int64)
    dataset_index = np.empty(size, dtype=np.int32)
    sample_index = np.empty(size, dtype=np.int64)
    for i in range(size):
        d = int(np.argmax(w * (i + 1) - counts))
        dataset_index[i] = d
        sample_index[i] = counts[d]
        counts[d] += 1
    return dataset_index, sample_index


class BlendedStream:
    """An endless stream of ``(dataset_id, tokens)`` mixing ``datasets`` by ``weights``.

    Args:
        datasets: Random-access sample sources (``SequenceDataset`` or alike).
        weights: Their normalized weights.
    """

    def __init__(self, datasets: Sequence, weights: Sequence[float]):
        if len(datasets) != len(weights):
            raise ValueError("one weight per dataset")
        self.datasets = list(datasets)
        self.weights = list(weights)
        self._dataset_index = np.empty(0, dtype=np.int32)
        self._sample_index = np.empty(0, dtype=np.int64)

    def _ensure(self, size: int) -> None:
        if size <= len(self._dataset_index):
            return
        # Grow geometrically; the greedy prefix is the same whatever the final length.
        target = max(size, 2 * len(self._dataset_index), 1024)
        self._dataset_index, self._sample_index = blend_indices(self.weights, target)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray]:
        """``(dataset_id, tokens)`` of blended sample ``index``."""
        if len(self.datasets) == 1:
            return 0, self.datasets[0][index]
        self._ensure(index + 1)
        d = int(self._dataset_index[index])
        return d, self.datasets[d][int(self._sample_index[index])]
