"""Blending: within one sample of the weights at every prefix, deterministic, resumable, cached."""

from __future__ import annotations

import os

import numpy as np
import pytest

from megatron.data.blend import BlendedStream, blend_indices, cached_blend


def max_deviation(dataset_index: np.ndarray, weights: np.ndarray) -> float:
    """max over prefixes n and datasets d of |count_d(n) - w_d n| (checked at every n)."""
    one_hot = np.zeros((len(dataset_index), len(weights)))
    one_hot[np.arange(len(dataset_index)), dataset_index] = 1
    counts = one_hot.cumsum(axis=0)
    n = np.arange(1, len(dataset_index) + 1)[:, None]
    return float(np.abs(counts - weights[None, :] * n).max())


@pytest.mark.parametrize("num", [2, 3, 5, 12, 40])
def test_every_prefix_is_within_one_sample_of_the_weights(num):
    rng = np.random.default_rng(num)
    for alpha in (0.3, 1.0):
        weights = rng.dirichlet([alpha] * num)
        dataset_index, sample_index = blend_indices(weights, 4000)
        assert max_deviation(dataset_index, weights) < 1.0
        for d in range(num):  # each dataset's samples are 0, 1, 2, ... in stream order
            assert np.array_equal(sample_index[dataset_index == d], np.arange((dataset_index == d).sum()))


def test_two_levels_keep_corpora_and_files_within_one_sample():
    weights = np.array([0.3, 0.1, 0.05, 0.25, 0.2, 0.1])
    groups = ["web", "web", "web", "code", "papers", "papers"]
    dataset_index, _ = blend_indices(weights, 5000, groups)
    corpus_of = np.array([0, 0, 0, 1, 2, 2])
    corpus_weights = np.array([0.45, 0.25, 0.3])
    assert max_deviation(corpus_of[dataset_index], corpus_weights) < 1.0
    web = dataset_index[corpus_of[dataset_index] == 0]
    assert max_deviation(web, weights[:3] / weights[:3].sum()) < 1.0


def test_blend_is_deterministic_and_prefix_stable():
    weights = [0.6, 0.3, 0.1]
    a = blend_indices(weights, 1000)
    b = blend_indices(weights, 50)
    assert np.array_equal(a[0][:50], b[0]) and np.array_equal(a[1][:50], b[1])
    assert np.array_equal(blend_indices(weights, 1000)[0], a[0])


class Tagged:
    def __init__(self, d: int):
        self.d = d

    def __getitem__(self, j: int) -> tuple[int, int]:
        return self.d, j


def test_stream_window_seek_and_counts_match_the_full_index():
    weights, groups = [0.5, 0.3, 0.2, 0.05, 0.1], ["a", "a", "b", "c", "c"]
    dataset_index, sample_index = blend_indices(weights, 20000, groups)
    stream = BlendedStream([Tagged(d) for d in range(5)], weights, groups)
    stream.CHUNK, stream.KEEP = 100, 300  # force many extensions and dropped windows
    assert [stream[i][1] for i in range(20000)] == list(zip(dataset_index.tolist(), sample_index.tolist(), strict=True))
    counts = stream.counts_at(12345)
    assert np.array_equal(counts, np.bincount(dataset_index[:12345], minlength=5))
    resumed = BlendedStream([Tagged(d) for d in range(5)], weights, groups)
    resumed.seek(12345, counts)  # O(datasets): no replay of the first 12345 samples
    assert [resumed[i][1] for i in range(12345, 14000)] == list(
        zip(dataset_index[12345:14000].tolist(), sample_index[12345:14000].tolist(), strict=True)
    )
    with pytest.raises(ValueError, match="does not fit"):
        resumed.seek(10, [1, 2, 3])


def test_cache_is_built_once_and_memory_mapped(tmp_path):
    weights, groups, names = [0.7, 0.2, 0.1], ["x", "y", "y"], ["p0", "p1", "p2"]
    assert cached_blend(str(tmp_path), weights, groups, names, 500, build=False) is None
    built = cached_blend(str(tmp_path), weights, groups, names, 500, build=True)
    (entry,) = os.listdir(tmp_path)
    stamp = os.path.getmtime(tmp_path / entry / "dataset_index.npy")
    loaded = cached_blend(str(tmp_path), weights, groups, names, 500, build=False)
    assert os.path.getmtime(tmp_path / entry / "dataset_index.npy") == stamp
    assert isinstance(loaded[0], np.memmap)
    reference = blend_indices(weights, 500, groups)
    assert np.array_equal(built[0], reference[0]) and np.array_equal(loaded[1], reference[1])
    # A stream over the cached prefix continues past it exactly as an uncached one.
    stream = BlendedStream([Tagged(d) for d in range(3)], weights, groups, index=loaded)
    full = blend_indices(weights, 900, groups)
    assert [stream[i][1] for i in range(900)] == list(zip(full[0].tolist(), full[1].tolist(), strict=True))
