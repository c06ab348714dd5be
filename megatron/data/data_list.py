"""Data file lists: one ``weight prefix corpus`` line per indexed dataset (docs/design.md §6).

Blank lines and ``#`` comments are allowed, a ``.bin`` suffix on the prefix is tolerated,
weights are renormalized to sum to 1. Relative prefixes are relative to the working directory
(as in Megatron). Every error names the file, the line and the fix, and every prefix is checked
before any process group starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from megatron.config.compat import INLINE_DATA_LIST
from megatron.config.fields import ConfigError
from megatron.config.root import Config


class DataListError(ConfigError):
    """A malformed data file list, or one naming files that do not exist."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DataEntry:
    """One dataset of a list.

    Attributes:
        weight: Normalized sampling weight (all entries of a list sum to 1).
        raw_weight: The weight as written.
        prefix: Path prefix of the ``.bin``/``.idx`` pair.
        corpus: Corpus name (groups entries for per-corpus loss).
        source: ``file:line`` where the entry was written.
    """

    weight: float
    raw_weight: float
    prefix: str
    corpus: str
    source: str


def _parse_line(line: str, where: str) -> tuple[float, str, str]:
    fields = line.split()
    if len(fields) != 3:
        raise DataListError(
            f"{where}: expected 3 fields 'weight prefix corpus', found {len(fields)}: {line!r}"
        )
    weight_text, prefix, corpus = fields
    try:
        weight = float(weight_text)
    except ValueError:
        raise DataListError(f"{where}: weight {weight_text!r} is not a number") from None
    if not weight > 0 or weight != weight or weight == float("inf"):
        raise DataListError(f"{where}: weight must be a positive number, got {weight_text}")
    if prefix.endswith(".bin") or prefix.endswith(".idx"):
        prefix = prefix[: -len(".bin")]
    return weight, prefix, corpus


def missing_files(prefix: str) -> list[str]:
    """The files of an indexed dataset that do not exist (``.bin``, ``.idx``)."""
    return [prefix + ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]


def parse_data_file_list(path: str, *, flag: str = "--data-file-list", check_files: bool = True) -> list[DataEntry]:
    """Read and validate a data file list.

    Args:
        path: The list file, or ``inline:line;line;...`` (Megatron's ``--data-path``, mapped by
            ``megatron/config/compat.py``; messages then name ``flag:N``).
        flag: Flag that named the list (for messages).
        check_files: Also check every ``.bin``/``.idx`` pair exists.

    Returns:
        The entries with normalized weights, in file order.

    Raises:
        DataListError: Missing list, malformed line, non-positive weight, missing data files.
    """
    if path.startswith(INLINE_DATA_LIST):  # Megatron's --data-path, mapped by config/compat.py
        lines = path.removeprefix(INLINE_DATA_LIST).split(";")
        path = f"{flag} (inline list)"
    else:
        try:
            with open(path) as f:
                lines = f.readlines()
        except OSError as e:
            raise DataListError(f"{flag}: cannot read data file list {path}: {e.strerror}") from None
    parsed = []
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            parsed.append((*_parse_line(line, f"{path}:{number}"), f"{path}:{number}"))
    if not parsed:
        raise DataListError(f"{flag}: data file list {path} has no entries")
    if check_files:
        for _, prefix, _, where in parsed:
            missing = missing_files(prefix)
            if missing:
                raise DataListError(
                    f"{where}: dataset prefix {prefix!r} is missing {', '.join(missing)} "
                    f"(relative paths are taken from {os.getcwd()}); tokenize it with "
                    "tools/preprocess_data.py or fix the path"
                )
    total = sum(w for w, _, _, _ in parsed)
    return [
        DataEntry(weight=w / total, raw_weight=w, prefix=p, corpus=c, source=where)
        for w, p, c, where in parsed
    ]


def check_data_inputs(config: Config) -> None:
    """Pre-flight check of the data a run names: every list parses and every prefix exists.

    Runs in ``pretrain_gpt.py`` (also under ``--dry-run``) before torch is imported.
    """
    data = config.data
    if data.data_file_list is None:
        return
    train = {os.path.realpath(e.prefix) for e in parse_data_file_list(data.data_file_list)}
    for flag, path in (
        ("--valid-data-file-list", data.valid_data_file_list),
        ("--test-data-file-list", data.test_data_file_list),
    ):
        if path is None:
            continue
        for entry in parse_data_file_list(path, flag=flag):
            if os.path.realpath(entry.prefix) in train:
                raise DataListError(
                    f"{flag}: {entry.source}: {entry.prefix} is also in --data-file-list "
                    f"{data.data_file_list}; evaluation data must not be trained on"
                )
