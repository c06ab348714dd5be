"""Megatron(-DeepSpeed) flags: every one implemented, an alias, mapped, a documented no-op or
refused with its reason (issue 22); the docs table is the registry's rendering."""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

from megatron.config import ConfigError, DistEnv, parse_args
from megatron.config.compat import COMPAT, VALUE_ALIASES
from megatron.config.compat_table import MEGATRON_FLAGS, compat_rows, compat_table
from megatron.config.schema import knob_by_flag
from megatron.plan import resolve
from tests.helpers import tiny_args

SNAPSHOT = os.path.join(os.path.dirname(__file__), "compat_flags.txt")


def plan_of(*flags: str, mock: bool = True):
    return resolve(parse_args(tiny_args("--train-iters", "2", *flags, mock=mock)).config, DistEnv())


def test_table_matches_snapshot():
    # Changing what a Megatron flag does is user-visible: update compat_flags.txt with it.
    with open(SNAPSHOT) as f:
        snapshot = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
    assert [f"{flag} | {status}" for flag, status, _ in compat_rows()] == snapshot


def test_readme_table_is_generated_from_the_registry(repo_root):
    with open(os.path.join(repo_root, "docs", "megatron_compat.md")) as f:
        assert compat_table() in f.read(), "run: python tools/compat_table.py --write"


def test_every_knob_flag_of_the_table_is_a_flag_of_the_parser():
    table = knob_by_flag()
    assert [f for f in MEGATRON_FLAGS if f not in table] == []
    # A registered foreign flag must not shadow one of ours (or its --no- form).
    ours = set(table) | {"--no-" + f[2:] for f in table}
    assert sorted(set(COMPAT) & ours) == []


@pytest.mark.parametrize("flag", sorted(f for f, e in COMPAT.items() if e.status == "no-op"))
def test_no_op_flag_is_accepted_and_leaves_the_plan_unchanged(flag):
    values = ["2"] if COMPAT[flag].nargs == 1 else []
    assert plan_of(flag, *values) == plan_of()


@pytest.mark.parametrize("flag", sorted(f for f, e in COMPAT.items() if e.status == "refused"))
def test_refused_flag_names_the_reason(flag):
    values = ["2"] if COMPAT[flag].nargs in (1, "*") else []
    with pytest.raises(ConfigError, match=rf"^{flag}: not supported: {re.escape(COMPAT[flag].note)}$"):
        parse_args(tiny_args(flag, *values))


@pytest.mark.parametrize(("theirs", "ours"), sorted(VALUE_ALIASES["--tokenizer-type"].items()))
def test_megatron_tokenizer_names_are_aliases(theirs, ours):
    assert parse_args(["--tokenizer-type", theirs, "--vocab-size", "64"]).config.data.tokenizer_type == ours
    assert parse_args([f"--tokenizer-type={theirs}", "--vocab-size", "64"]).config.data.tokenizer_type == ours


def test_vocab_and_merge_files_imply_gpt2bpe_unless_a_tokenizer_is_named():
    files = ["--vocab-file", "v.json", "--merge-file", "m.txt"]
    assert parse_args(files).config.data.tokenizer_type == "gpt2bpe"
    with pytest.raises(ConfigError, match=r"--vocab-file: only --tokenizer-type gpt2bpe .* the tokenizer is 'byte'"):
        parse_args([*files, "--tokenizer-type", "byte"])


def test_data_impl_mmap_is_accepted_other_values_refused():
    assert plan_of("--data-impl", "mmap") == plan_of()
    with pytest.raises(ConfigError, match=r"--data-impl: 'lazy' is not supported: .*memory-mapped"):
        parse_args(tiny_args("--data-impl", "lazy"))


def test_position_embedding_type_maps_to_rope_switch():
    assert parse_args(["--position-embedding-type", "learned_absolute"]).config.model.use_rotary_position_embeddings is False
    assert parse_args(["--position-embedding-type", "rope"]).config.model.use_rotary_position_embeddings is True
    with pytest.raises(ConfigError, match=r"--position-embedding-type: 'alibi' is not supported"):
        parse_args(["--position-embedding-type", "alibi"])


def test_split_path_flags_map_to_data_file_lists():
    cfg = parse_args(["--train-data-path", "0.5", "a", "0.5", "b", "--valid-data-path", "c",
                      "--test-data-path-file", "t.txt"]).config.data
    assert cfg.data_file_list == "inline:0.5 a a;0.5 b b"
    assert cfg.valid_data_file_list == "inline:1 c c"
    assert (cfg.test_data_file_list, cfg.split) == ("t.txt", "100,0,0")
    # A --split the user gives is kept.
    assert parse_args(["--train-data-path-file", "t.txt", "--split", "90,10,0"]).config.data.split == "90,10,0"


@pytest.mark.parametrize(("values", "message"), [
    (["0.3", "A", "0.7"], r"--data-path: expected 'weight prefix' pairs, got 3 values"),
    (["x", "A", "0.7", "B"], r"--data-path: weight 'x' \(before A\) is not a number"),
    ([], r"--data-path: expected a prefix or 'weight prefix' pairs"),
])
def test_data_path_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(["--data-path", *values])


def test_data_path_gives_the_same_blend_as_a_data_file_list(three_corpora, tmp_path):
    from megatron.data.builder import build_streams

    a, b = three_corpora["comedy"], three_corpora["tragedy"]
    listed = tmp_path / "list.txt"
    listed.write_text(f"0.3 {a} {os.path.basename(a)}\n0.7 {b} {os.path.basename(b)}\n")
    common = ("--seq-length", "32", "--global-batch-size", "4")
    inline = build_streams(plan_of(*common, "--data-path", "0.3", a, "0.7", b, mock=False))
    from_file = build_streams(plan_of(*common, "--data-file-list", str(listed), mock=False))
    for split in ("train", "valid"):
        x, y = getattr(inline, split), getattr(from_file, split)
        assert x.corpora == y.corpora
        for i in range(80):
            sx, sy = x.stream[i], y.stream[i]
            assert sx[0] == sy[0] and (sx[1] == sy[1]).all()
    counts = inline.train.stream.counts_at(1000)
    assert counts[0] / 1000 == pytest.approx(0.3, abs=0.01)  # the weights, not just the order


def test_wandb_flags_need_a_project_and_the_package(monkeypatch):
    with pytest.raises(ConfigError, match=r"--wandb-group: needs --wandb-project"):
        parse_args(["--wandb-group", "G"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"--wandb-project: the wandb package is not installed; pip install wandb"):
        parse_args(["--wandb-project", "P"])


MAPPED_SAMPLES = {
    "--data-path": (["0.3", "a", "0.7", "b"], ("data", "data_file_list"), "inline:0.3 a a;0.7 b b"),
    "--train-data-path": (["a"], ("data", "data_file_list"), "inline:1 a a"),
    "--valid-data-path": (["v"], ("data", "valid_data_file_list"), "inline:1 v v"),
    "--test-data-path": (["t"], ("data", "test_data_file_list"), "inline:1 t t"),
    "--train-data-path-file": (["a.txt"], ("data", "data_file_list"), "a.txt"),
    "--valid-data-path-file": (["v.txt"], ("data", "valid_data_file_list"), "v.txt"),
    "--test-data-path-file": (["t.txt"], ("data", "test_data_file_list"), "t.txt"),
    "--position-embedding-type": (["learned_absolute"], ("model", "use_rotary_position_embeddings"), False),
    "--data-impl": (["mmap"], ("data", "split"), "98,1,1"),
    "--no-pipeline-parallel": ([], ("parallel", "pipeline_model_parallel_size"), 1),
    "--rotary-position-embeddings-theta": (["50000"], ("model", "rotary_base"), 50000.0),
    "--use-flash-attn-builder": ([], ("model", "use_flash_attn"), True),
}


@pytest.mark.parametrize("flag", sorted(f for f, e in COMPAT.items() if e.status == "mapped"))
def test_every_mapped_flag_parses_onto_our_knob(flag):
    values, (section, field), expected = MAPPED_SAMPLES[flag]
    needs_train = ("--train-data-path-file", "a.txt") if "valid" in flag or "test" in flag else ()
    cfg = parse_args([flag, *values, *needs_train]).config
    assert getattr(getattr(cfg, section), field) == expected


def test_data_path_prefix_errors_name_the_inline_list(tmp_path):
    from megatron.data.data_list import check_data_inputs

    missing = str(tmp_path / "nope")
    cfg = parse_args(["--data-path", "0.5", missing, "0.5", missing + "2"]).config
    with pytest.raises(ConfigError, match=r"--data-file-list \(inline list\):1: dataset prefix '.*nope' is missing"):
        check_data_inputs(cfg)


@pytest.mark.compat("--ffn-hidden-size", "--num-query-groups", "--layernorm-epsilon", "--lr-decay-tokens",
                    "--sgd-momentum", "--use-flash-attn-v2", "--use-flash-attn-triton", "--no-load-rng",
                    "--exit-duration-in-mins", "--distributed-timeout-minutes")
def test_remaining_megatron_knob_flags_reach_the_plan():
    plan = plan_of("--ffn-hidden-size", "48", "--num-query-groups", "2", "--layernorm-epsilon", "1e-6",
                   "--lr-decay-tokens", "320", "--sgd-momentum", "0.8", "--exit-duration-in-mins", "5",
                   "--distributed-timeout-minutes", "7", "--no-load-rng")
    c = plan.config
    assert (c.model.ffn_hidden_size, c.model.num_key_value_heads, c.model.norm_epsilon) == (48, 2, 1e-6)
    assert plan.decay_steps == 10  # 320 tokens / (2 samples x 16 tokens)
    assert (c.optim.sgd_momentum, c.train.exit_duration_in_mins, c.parallel.distributed_timeout_minutes) == (0.8, 5, 7)
    assert c.checkpoint.no_load_rng is True
    for flag in ("--use-flash-attn-v2", "--use-flash-attn-triton"):
        assert parse_args([flag]).config.model.use_flash_attn is True


def test_a_row_says_implemented_only_when_a_test_runs_the_flag(repo_root):
    from megatron.config.compat_claims import scan_claims

    claims = scan_claims(repo_root)
    rows = {flag: status for flag, status, _ in compat_rows(claims)}
    working = sorted(f for f, s in rows.items() if s in ("implemented", "alias") and f in MEGATRON_FLAGS)
    assert [f for f in working if not claims.get(f)] == []
    # Without the tests' claims nothing is implemented; sequence parallelism is claimed by
    # tests/distributed/test_sequence_parallel.py (it was listed as implemented while refused).
    assert {s for f, s, _ in compat_rows({}) if f in MEGATRON_FLAGS} <= {"untested", "refused"}
    assert rows["--sequence-parallel"] == "implemented"
    assert "tests/distributed/test_sequence_parallel.py" in " ".join(claims["--sequence-parallel"])


def test_a_marker_without_the_flag_in_the_test_claims_nothing(tmp_path):
    from megatron.config.compat_claims import scan_claims

    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pytest\n\n\n@pytest.mark.compat('--lr', '--min-lr')\n"
        "def test_x():\n    run(['--lr', '1e-3'])\n")
    assert scan_claims(str(tmp_path)) == {"--lr": ["tests/test_x.py"]}
