"""Input readers: where users keep text (JSONL, compressed JSONL, Parquet, Arrow, ``datasets``).

One registry, ``INPUT_FORMATS``, maps a file kind to a reader that streams ``Batch`` es of at
most ``batch_rows`` records, so memory is bounded by the batch, never by the corpus:

- ``jsonl``: ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``, ``.json`` and ``.json.gz`` (JSON lines; a
  ``.json`` file holding one JSON array is read whole), decoded as strict UTF-8 line by line;
- ``parquet``: ``.parquet`` through ``pyarrow.parquet`` (only the named columns are read);
- ``arrow``: ``.arrow`` IPC files or streams, memory-mapped (what ``datasets`` writes);
- ``text``: any other named file is one document (field ``text``).

``resolve_inputs`` expands globs and directories (sorted, so the document order is the same on
any machine), a ``datasets.save_to_disk`` directory into its Arrow files, and ``hf_dataset_files``
finds a Hub dataset's Arrow files in the local cache, offline. Every bad input is a one-line
``InputError`` naming the file and the line or row: a missing column, a null or non-string text
field, a row that is not UTF-8, a file that is not Parquet.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from megatron.config.fields import ConfigError
from megatron.registry import Registry


class InputError(ValueError):
    """An input that cannot be read; the message names the file and the line or row."""


@dataclass(frozen=True, slots=True)
class InputFile:
    """One file to read and the format that reads it.

    Attributes:
        path: The file.
        format: A key of ``INPUT_FORMATS``.
    """

    path: str
    format: str


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive records of one file.

    Attributes:
        source: The file.
        rows: Each record's position: its line (1-based) in line formats, its row (0-based)
            in tables.
        unit: ``line`` or ``row``: how ``rows`` count.
        columns: Text field -> one string per record.
        done_bytes: Bytes of ``source`` consumed once this batch is read (progress and ETA).
    """

    source: str
    rows: list[int]
    unit: str
    columns: dict[str, list[str]]
    done_bytes: int

    def where(self, index: int) -> str:
        """``file:LINE`` or ``file: row N`` of the batch's ``index``-th record."""
        return where(self.source, self.rows[index], self.unit)


def where(source: str, row: int, unit: str) -> str:
    """``file:LINE`` for line formats, ``file: row N`` for tables."""
    return f"{source}:{row}" if unit == "line" else f"{source}: row {row}"


Reader = Callable[[str, Sequence[str], int], Iterator[Batch]]


@dataclass(frozen=True, kw_only=True, slots=True)
class InputFormatSpec:
    """A registered input format: the file suffixes it claims and its reader."""

    name: str
    suffixes: tuple[str, ...]
    read: Reader


INPUT_FORMATS: Registry[InputFormatSpec] = Registry("input format", "--input")
"""Format name (``format_of`` picks it by an ``--input`` file's suffix) -> reader."""


def register_input_format(name: str, suffixes: tuple[str, ...]) -> Callable[[Reader], Reader]:
    """Decorator registering ``read(path, keys, batch_rows) -> Iterator[Batch]`` as ``name``."""

    def decorate(read: Reader) -> Reader:
        INPUT_FORMATS.add(name, InputFormatSpec(name=name, suffixes=suffixes, read=read))
        return read

    return decorate


def format_of(path: str) -> str | None:
    """The registered format whose suffix ``path`` ends with (None: not a known kind)."""
    for spec in INPUT_FORMATS.values():
        if path.endswith(spec.suffixes):
            return spec.name
    return None


def check_text(value: Any, key: str, source: str, row: int, unit: str) -> str:
    """``value`` if it is a string, else an ``InputError`` naming the record and the field."""
    if isinstance(value, str):
        return value
    what = "null" if value is None else f"a {type(value).__name__}, not a string"
    raise InputError(f"{where(source, row, unit)}: field {key!r} is {what}")


def _open_binary(path: str) -> tuple[BinaryIO, BinaryIO]:
    """(decompressed stream, raw file): the raw file's position measures progress."""
    raw = open(path, "rb")  # noqa: SIM115  (closed by the caller through the stream)
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw), raw
    if path.endswith(".zst"):
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return io.BufferedReader(reader, 1 << 20), raw
    return raw, raw


def _record_texts(record: Any, keys: Sequence[str], source: str, row: int, unit: str) -> list[str]:
    if not isinstance(record, dict):
        raise InputError(f"{where(source, row, unit)}: expected a JSON object, got "
                         f"{type(record).__name__}")
    texts = []
    for key in keys:
        if key not in record:
            fields = ", ".join(map(str, record))
            raise InputError(f"{where(source, row, unit)}: no field {key!r} (fields: {fields}); "
                             "name the text fields with --json-keys")
        texts.append(check_text(record[key], key, source, row, unit))
    return texts


def _json_lines(path: str, stream: BinaryIO) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) per non-blank line; strict UTF-8."""
    for number, line in enumerate(stream, start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            bad = line[e.start : e.start + 1]
            raise InputError(f"{path}:{number}: not UTF-8 (byte {e.start} of the line: {bad!r}); "
                             "re-encode the file as UTF-8") from None
        if not text.strip():
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{number}: bad record ({e})") from None


@register_input_format("jsonl", (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz",
                                 ".json.zst"))
def read_json(path: str, keys: Sequence[str], batch_rows: int) -> Iterator[Batch]:
    """JSON lines (or one JSON array), plain, gzip or zstd compressed."""
    stream, raw = _open_binary(path)
    with stream, raw:
        first = stream.peek(1)[:1] if hasattr(stream, "peek") else b""
        if first.lstrip() == b"[" and ".json" in path and ".jsonl" not in path:
            records: Iterator[tuple[int, Any]] = enumerate(json.load(stream))
            unit = "row"
        else:
            records, unit = _json_lines(path, stream), "line"
        rows: list[int] = []
        columns: dict[str, list[str]] = {key: [] for key in keys}
        for number, record in records:
            texts = _record_texts(record, keys, path, number, unit)
            for key, text in zip(keys, texts, strict=True):
                columns[key].append(text)
            rows.append(number)
            if len(rows) == batch_rows:
                yield Batch(path, rows, unit, columns, raw.tell())
                rows, columns = [], {key: [] for key in keys}
        if rows:
            yield Batch(path, rows, unit, columns, raw.tell())


@register_input_format("text", ())
def read_text(path: str, keys: Sequence[str], batch_rows: int) -> Iterator[Batch]:
    """The whole file is one document (field ``text``); undecodable bytes are replaced."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    yield Batch(path, [1], "line", {"text": [text]}, os.path.getsize(path))


def _string_column(path: str, column: Any, key: str, first_row: int) -> list[str]:
    """A checked Arrow column as Python strings: nulls, non-strings, bad UTF-8 name the row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        index = pc.index(pc.is_null(column), True).as_py()
        raise InputError(f"{where(path, first_row + index, 'row')}: field {key!r} is null")
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return column.to_pylist()
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        out = []
        for index, value in enumerate(column.to_pylist()):
            try:
                out.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                raise InputError(f"{where(path, first_row + index, 'row')}: field {key!r} is "
                                 "not UTF-8") from None
        return out
    raise InputError(f"{path}: column {key!r} has type {kind}, not strings; name the text "
                     "columns with --json-keys")


def _check_schema(path: str, schema: Any, keys: Sequence[str]) -> None:
    missing = [key for key in keys if key not in schema.names]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r} (columns: {', '.join(schema.names)}); "
                         "name the text columns with --json-keys")


def _table_batches(path: str, batches: Iterator[Any], keys: Sequence[str], batch_rows: int,
                   num_rows: int) -> Iterator[Batch]:
    """Re-slice Arrow record batches to ``batch_rows`` and check their text columns."""
    import pyarrow as pa

    size, row = os.path.getsize(path), 0
    try:
        for record_batch in batches:
            for offset in range(0, record_batch.num_rows, batch_rows):
                part = record_batch.slice(offset, batch_rows)
                columns = {key: _string_column(path, part.column(key), key, row) for key in keys}
                rows = list(range(row, row + part.num_rows))
                row += part.num_rows
                yield Batch(path, rows, "row", columns, size * row // max(num_rows, 1))
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{where(path, row, 'row')}: unreadable ({e})") from None


@register_input_format("parquet", (".parquet",))
def read_parquet(path: str, keys: Sequence[str], batch_rows: int) -> Iterator[Batch]:
    """Parquet through pyarrow, only the text columns, ``batch_rows`` rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    with parquet:
        _check_schema(path, parquet.schema_arrow, keys)
        batches = parquet.iter_batches(batch_size=batch_rows, columns=list(keys))
        yield from _table_batches(path, batches, keys, batch_rows, parquet.metadata.num_rows)


@register_input_format("arrow", (".arrow",))
def read_arrow(path: str, keys: Sequence[str], batch_rows: int) -> Iterator[Batch]:
    """An Arrow IPC file or stream (``datasets`` caches), memory-mapped."""
    import pyarrow as pa

    try:
        source = pa.memory_map(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Arrow file ({e})") from None
    with source:
        try:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            num_rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            source.seek(0)
            try:
                # A stream has no footer: count its rows through a second mapping (cheap, lazy).
                with pa.memory_map(path) as counter:
                    num_rows = sum(b.num_rows for b in pa.ipc.open_stream(counter))
                reader = pa.ipc.open_stream(source)
            except (pa.ArrowException, OSError) as e:
                raise InputError(f"{path}: not a readable Arrow file ({e})") from None
            batches = iter(reader)
        _check_schema(path, reader.schema, keys)
        yield from _table_batches(path, batches, keys, batch_rows, num_rows)


def read_batches(inputs: Sequence[InputFile], keys: Sequence[str],
                 batch_rows: int = 512) -> Iterator[Batch]:
    """Batches of every input, in order."""
    for item in inputs:
        yield from INPUT_FORMATS.get(item.format).read(item.path, keys, batch_rows)


def read_records(inputs: Sequence[InputFile], keys: Sequence[str],
                 batch_rows: int = 512) -> Iterator[tuple[str, int, dict[str, str]]]:
    """``(source, row, {key: text})`` per record, in order (for code that wants records)."""
    for batch in read_batches(inputs, keys, batch_rows):
        for i, row in enumerate(batch.rows):
            yield batch.source, row, {key: batch.columns[key][i] for key in keys}


def saved_dataset_files(path: str, split: str | None = None) -> list[str]:
    """The Arrow files of a ``datasets`` ``save_to_disk`` directory (``split`` of a DatasetDict).

    Raises:
        InputError: Not such a directory, or an unknown or missing split.
    """
    dict_file = os.path.join(path, "dataset_dict.json")
    if os.path.isfile(dict_file):
        with open(dict_file) as f:
            splits = json.load(f).get("splits", [])
        if split is None:
            split = "train" if "train" in splits else None
        if split not in splits:
            raise InputError(f"{path}: a DatasetDict with splits {splits}; choose one with --split")
        path = os.path.join(path, split)
    state = os.path.join(path, "state.json")
    if not os.path.isfile(state):
        raise InputError(f"{path}: not a datasets save_to_disk directory (no state.json)")
    with open(state) as f:
        names = [item["filename"] for item in json.load(f).get("_data_files", [])]
    return [os.path.join(path, name) for name in names]


def is_saved_dataset(path: str) -> bool:
    """Whether ``path`` is a ``save_to_disk`` directory (a Dataset or a DatasetDict)."""
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in ("state.json", "dataset_dict.json"))


def _expand(pattern: str, split: str | None) -> list[InputFile]:
    if is_saved_dataset(pattern):
        return [InputFile(p, "arrow") for p in saved_dataset_files(pattern, split)]
    if os.path.isdir(pattern):
        found = []
        for root, dirs, files in os.walk(pattern):
            dirs.sort()
            if is_saved_dataset(root):
                found += [InputFile(p, "arrow") for p in saved_dataset_files(root, split)]
                dirs.clear()
                continue
            for name in sorted(files):
                kind = format_of(name)
                if kind is not None or name.endswith(".txt"):
                    found.append(InputFile(os.path.join(root, name), kind or "text"))
        return found
    if os.path.isfile(pattern):
        return [InputFile(pattern, format_of(pattern) or "text")]
    return [item for path in sorted(glob.glob(pattern, recursive=True))
            for item in _expand(path, split)]


def resolve_inputs(patterns: Sequence[str], split: str | None = None) -> list[InputFile]:
    """Files (globs, directories, ``save_to_disk`` directories expanded, sorted) and formats.

    Raises:
        FileNotFoundError: A pattern that names nothing readable (the message names ``--input``).
    """
    out: list[InputFile] = []
    for pattern in patterns:
        found = _expand(pattern, split)
        if not found:
            kinds = ", ".join(s for f in INPUT_FORMATS.values() for s in f.suffixes)
            raise FileNotFoundError(f"--input: {pattern!r} names no input file (known kinds: "
                                    f"{kinds}, .txt)")
        out += found
    return out


def hf_dataset_files(name: str, config: str | None = None, split: str | None = None,
                     cache_dir: str | None = None) -> list[InputFile]:
    """A Hub dataset's Arrow files in the local cache, found offline (never a download).

    Raises:
        ConfigError: Not cached (the message says how to fix it).
    """
    from megatron.config.env import force_hf_offline

    force_hf_offline()
    import datasets

    split = split or "train"
    try:
        dataset = datasets.load_dataset(name, config, split=split, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001  (datasets raises many kinds for "not cached")
        raise ConfigError(
            f"--hf-dataset {name}" + (f" --hf-config {config}" if config else "") +
            f" --split {split}: not in the local Hugging Face cache ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); download it where there is network "
            "(datasets.load_dataset) or pass its files with --input") from None
    files = [item["filename"] for item in dataset.cache_files]
    if not files:
        raise ConfigError(f"--hf-dataset {name}: the dataset has no cache files to read")
    return [InputFile(path, "arrow") for path in files]
