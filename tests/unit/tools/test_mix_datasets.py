"""tools/mix_datasets.py: weights (w / sum w) * (W_k / sum W), parse-back, rounding, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from megatron.data.data_list import parse_data_file_list
from megatron.data.mixing import MixedEntry, MixInput, mix_data_lists, parse_mix_pairs, render_mix
from tools import mix_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(ROOT, "tools", "mix_datasets.py")


@pytest.fixture
def lists(tmp_path):
    """Two lists: papers (3:1) and web/code (2:2:4); no .bin/.idx files exist."""
    papers = tmp_path / "papers.txt"
    papers.write_text("# papers\n3 data/a1 papers\n\n1 data/a2.bin papers  # suffix tolerated\n")
    web = tmp_path / "web.txt"
    web.write_text("2 data/b1 web\n2 data/b2 web\n4 data/b3 code\n")
    return str(papers), str(web)


# Hand-computed for W = 9 (papers), 1 (web): shares 0.9 and 0.1.
#   a1 = 3/4 * 0.9 = 0.675     a2 = 1/4 * 0.9 = 0.225
#   b1 = 2/8 * 0.1 = 0.025     b2 = 2/8 * 0.1 = 0.025    b3 = 4/8 * 0.1 = 0.05
EXPECTED = [
    (0.675, "data/a1", "papers"),
    (0.225, "data/a2", "papers"),
    (0.025, "data/b1", "web"),
    (0.025, "data/b2", "web"),
    (0.05, "data/b3", "code"),
]


def test_mixed_weights_match_formula(lists):
    papers, web = lists
    entries = mix_data_lists([MixInput(weight=9, path=papers), MixInput(weight=1, path=web)])
    got = [(e.weight, e.prefix, e.corpus) for e in entries]
    assert [g[1:] for g in got] == [x[1:] for x in EXPECTED]
    assert [g[0] for g in got] == pytest.approx([x[0] for x in EXPECTED], abs=1e-15)
    assert [e.source for e in entries] == [
        f"{papers}:2",
        f"{papers}:4",
        f"{web}:1",
        f"{web}:2",
        f"{web}:3",
    ]


def test_cli_output_parses_back_to_the_formula(lists, tmp_path, capsys):
    papers, web = lists
    assert mix_datasets.main(["--inputs", "0.9", papers, "0.1", web]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"# written by: tools/mix_datasets.py --inputs 0.9 {papers} 0.1 {web}\n")
    assert "0.675000000000 data/a1 papers\n" in out  # 12 decimals by default
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(out)
    parsed = parse_data_file_list(str(mixed), check_files=False)
    assert [(e.prefix, e.corpus) for e in parsed] == [x[1:] for x in EXPECTED]
    assert [e.weight for e in parsed] == pytest.approx([x[0] for x in EXPECTED], abs=1e-12)


def test_output_file_is_written_atomically(lists, tmp_path, capsys):
    papers, web = lists
    target = tmp_path / "out" / "mixed.txt"
    target.parent.mkdir()
    target.write_text("old contents\n")
    assert mix_datasets.main(["--inputs", "9", papers, "1", web, "--output", str(target)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and f"wrote 5 entries to {target}" in err
    assert os.listdir(target.parent) == ["mixed.txt"]  # no temporary file left behind
    parsed = parse_data_file_list(str(target), check_files=False)
    assert [e.weight for e in parsed] == pytest.approx([x[0] for x in EXPECTED], abs=1e-12)


def test_input_alias_as_the_seed_types_it(lists, tmp_path):
    # python3 mix_datasets.py --input 0.9 papers.txt 0.1 dolma.txt > out.txt
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        proc = subprocess.run(
            [sys.executable, SCRIPT, "--input", "0.9", "papers.txt", "0.1", "web.txt"],
            cwd=tmp_path,
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    parsed = parse_data_file_list(str(out), check_files=False)
    assert [e.weight for e in parsed] == pytest.approx([x[0] for x in EXPECTED], abs=1e-12)


def test_entry_rounding_to_zero_is_dropped_with_a_warning(tmp_path, capsys):
    big = tmp_path / "big.txt"
    big.write_text("1 data/c1 big\n1e-9 data/c2 tiny\n")
    # c2 = 1e-9 / (1 + 1e-9) * 1.0 ~ 1e-9, which is 0.000000 at 6 decimals.
    assert mix_datasets.main(["--inputs", "1", str(big), "--precision", "6"]) == 0
    out, err = capsys.readouterr()
    assert "1.000000 data/c1 big\n" in out
    assert "data/c2" not in out
    assert f"{big}:2: data/c2 (tiny) has weight 1e-09, which rounds to 0 at --precision 6" in err
    assert "dropped" in err
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(out)
    assert [e.prefix for e in parse_data_file_list(str(mixed), check_files=False)] == ["data/c1"]


def test_render_keeps_entries_at_enough_precision(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("1 data/c1 big\n1e-9 data/c2 tiny\n")
    rendered = render_mix(mix_data_lists([MixInput(weight=1, path=str(big))]), precision=12)
    assert rendered.dropped == [] and "0.000000001000 data/c2 tiny" in rendered.text


def test_all_entries_rounding_to_zero_is_an_error(tmp_path):
    entries = [MixedEntry(weight=1e-9, prefix="data/x", corpus="x", source="tiny.txt:1")]
    with pytest.raises(ValueError, match="--precision: every weight rounds to zero at 3 decimals"):
        render_mix(entries, precision=3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["0.9", "{papers}", "0.1"],
            "--inputs: expected pairs 'WEIGHT LIST [WEIGHT LIST ...]', got 3",
        ),
        (["x", "{papers}"], "--inputs: weight 'x' (argument 1, for {papers}) is not a number"),
        (
            ["1", "{papers}", "0", "{web}"],
            "--inputs: weight '0' (argument 3, for {web}) must be a positive",
        ),
        (["-1", "{papers}"], "--inputs: weight '-1' (argument 1, for {papers}) must be a positive"),
        (["nan", "{papers}"], "weight 'nan' (argument 1, for {papers}) must be a positive"),
        (["1", "{missing}"], "--inputs: cannot read data file list {missing}"),
        (
            ["1", "{papers}", "1", "{bad}"],
            "{bad}:2: expected 3 fields 'weight prefix corpus', found 2",
        ),
        (["1", "{bad_weight}"], "{bad_weight}:1: weight must be a positive number, got 0"),
        (
            ["1", "{papers}", "--check-files"],
            "{papers}:2: dataset prefix 'data/a1' is missing data/a1.bin",
        ),
        (["1", "{papers}", "--precision", "0"], "--precision: must be at least 1, got 0"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(lists, tmp_path, capsys, args, message):
    papers, web = lists
    bad = tmp_path / "bad.txt"
    bad.write_text("1 data/ok ok\n1 data/no-corpus\n")
    bad_weight = tmp_path / "bad_weight.txt"
    bad_weight.write_text("0 data/z z\n")
    names = {
        "papers": papers,
        "web": web,
        "bad": str(bad),
        "bad_weight": str(bad_weight),
        "missing": str(tmp_path / "missing.txt"),
    }
    argv = ["--inputs", *(a.format(**names) for a in args)]
    assert mix_datasets.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("mix_datasets.py: error: ")
    assert message.format(**names) in err


def test_output_to_unwritable_directory_exits_2(lists, tmp_path, capsys):
    papers, _ = lists
    target = tmp_path / "no-such-dir" / "mixed.txt"
    assert mix_datasets.main(["--inputs", "1", papers, "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mix_datasets.py: error: --output: cannot write {target}")


def test_parse_mix_pairs_keeps_order_and_raw_weights():
    pairs = parse_mix_pairs(["0.9", "a.txt", "1e-1", "b.txt"])
    assert pairs == [MixInput(weight=0.9, path="a.txt"), MixInput(weight=0.1, path="b.txt")]
