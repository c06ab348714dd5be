"""Data file lists: parsing, normalization, and errors that name the file and line."""

from __future__ import annotations

import pytest

from megatron.data.data_list import DataListError, parse_data_file_list


def make_prefix(tmp_path, name: str) -> str:
    prefix = tmp_path / name
    (tmp_path / f"{name}.bin").write_bytes(b"")
    (tmp_path / f"{name}.idx").write_bytes(b"")
    return str(prefix)


def test_weights_renormalized_comments_and_bin_suffix(tmp_path):
    a, b = make_prefix(tmp_path, "a"), make_prefix(tmp_path, "b")
    path = tmp_path / "list.txt"
    path.write_text(f"# corpora\n\n3 {a} books\n1 {b}.bin web  # trailing comment\n")
    entries = parse_data_file_list(str(path))
    assert [(e.weight, e.prefix, e.corpus) for e in entries] == [(0.75, a, "books"), (0.25, b, "web")]
    assert entries[1].source == f"{path}:4"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("abc {a} books", r"list.txt:2: weight 'abc' is not a number"),
        ("0 {a} books", r"list.txt:2: weight must be a positive number, got 0"),
        ("-1 {a} books", r"list.txt:2: weight must be a positive number"),
        ("1 {a}", r"list.txt:2: expected 3 fields 'weight prefix corpus', found 2"),
        ("1 {a} books extra", r"list.txt:2: expected 3 fields"),
        ("1 {a}_missing books", r"list.txt:2: dataset prefix .* is missing .*_missing.bin, .*_missing.idx"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    a = make_prefix(tmp_path, "a")
    path = tmp_path / "list.txt"
    path.write_text(f"1 {a} ok\n{line.format(a=a)}\n")
    with pytest.raises(DataListError, match=message):
        parse_data_file_list(str(path))


def test_missing_and_empty_lists(tmp_path):
    with pytest.raises(DataListError, match=r"--data-file-list: cannot read data file list"):
        parse_data_file_list(str(tmp_path / "none.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DataListError, match=r"has no entries"):
        parse_data_file_list(str(tmp_path / "empty.txt"))
