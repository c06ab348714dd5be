"""Replay weights (continual.md section 8, item 4) and the blended lists written from them."""

from __future__ import annotations

import numpy as np
import pytest

from megatron.config.fields import ConfigError
from megatron.continual.replay import blended_list, parse_replay, replay_weights
from megatron.data.blend import blend_indices
from megatron.data.data_list import parse_data_file_list


def test_ratio_half_uniform_over_earlier_stages():
    cfg = parse_replay({"ratio": 0.5, "pool": "uniform-stages"}, "replay")
    assert replay_weights(cfg, 3) == pytest.approx([1 / 6, 1 / 6, 1 / 6, 0.5], abs=1e-12)
    assert replay_weights(cfg, 0) == [1.0]


def test_equal_and_none():
    assert replay_weights(parse_replay({"ratio": "equal"}, "r"), 3) == [0.25] * 4
    assert replay_weights(parse_replay("equal", "r"), 1) == [0.5, 0.5]
    assert replay_weights(parse_replay("none", "r"), 2) == [0.0, 0.0, 1.0]


def test_ratio_by_tokens():
    cfg = parse_replay({"ratio": 0.6, "pool": "tokens"}, "r")
    assert replay_weights(cfg, 2, [300.0, 100.0, 5.0]) == pytest.approx([0.3, 0.1, 0.6], abs=1e-12)


def test_aurora_weights_with_a_growing_buffer():
    cfg = parse_replay({"weights": [0.05, 0.48, 0.47]}, "r")
    # t=2: D_0, buffer {D_1}, new D_2; t=3: the buffer holds D_1 and D_2.
    assert replay_weights(cfg, 2) == pytest.approx([0.05, 0.47, 0.48], abs=1e-12)
    assert replay_weights(cfg, 3) == pytest.approx([0.05, 0.235, 0.235, 0.48], abs=1e-12)
    first = parse_replay({"weights": [0.05, 0.95, 0]}, "r")
    assert replay_weights(first, 1) == pytest.approx([0.05, 0.95], abs=1e-12)
    with pytest.raises(ConfigError, match="buffer of earlier continual stages is still empty"):
        replay_weights(cfg, 1)


@pytest.mark.parametrize(
    ("raw", "message"),
    [({"weights": [0.3, 0.3, 0.3]}, r"must be 1, got \[0.3, 0.3, 0.3\]"),
     ({"ratio": 1.5}, r"must be in \(0, 1\]"),
     ({"ratio": 0.5, "pool": "stages"}, "unknown pool 'stages'"),
     ({"ratio": 0.5, "weights": [1, 0, 0]}, "exactly one of ratio / weights"),
     ("half", "expected none, equal")],
)
def test_bad_replay_settings(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_replay(raw, "method.replay")


def test_blended_list_uses_the_mix_formula_and_counts_follow_the_weights(cpt_lists, tmp_path):
    # A source with two datasets (weights 3:1) keeps its internal proportions inside its share.
    two = tmp_path / "two.txt"
    prefixes = [parse_data_file_list(cpt_lists[k])[0].prefix for k in ("a", "eval_a")]
    two.write_text(f"3 {prefixes[0]} plays\n1 {prefixes[1]} more\n")
    sources = [("s0", str(two)), ("s1", cpt_lists["b"]), ("s2", cpt_lists["code"]), ("s3", cpt_lists["eval_b"])]
    weights = replay_weights(parse_replay({"ratio": 0.5}, "r"), 3)
    path = tmp_path / "blend.txt"
    path.write_text(blended_list(sources, weights, ["test"]))
    entries = parse_data_file_list(str(path))
    assert [e.corpus for e in entries] == ["s0", "s0", "s1", "s2", "s3"]
    # (w / sum of its list) * W_k: D_0's two datasets split its 1/6 as 3:1.
    assert [e.weight for e in entries] == pytest.approx([0.125, 1 / 24, 1 / 6, 1 / 6, 0.5], abs=1e-11)
    # The trainer's two-level blend (by corpus = source, then file): over the first 1,200
    # samples every source is within one sample of weight x 1,200.
    dataset, _ = blend_indices([e.weight for e in entries], 1200, [e.corpus for e in entries])
    source_of = np.array([0, 0, 1, 2, 3])[dataset]
    for d, w in enumerate([1 / 6, 1 / 6, 1 / 6, 0.5]):
        assert abs((source_of == d).sum() - w * 1200) <= 1


def test_zero_weights_leave_a_source_out(cpt_lists):
    text = blended_list([("s0", cpt_lists["a"]), ("s1", cpt_lists["b"])], [0.0, 1.0])
    entries = [line.split() for line in text.splitlines() if not line.startswith("#")]
    assert [e[2] for e in entries] == ["s1"]
