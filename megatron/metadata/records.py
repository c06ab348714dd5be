"""Documents with metadata records: the BigScience data format, checked before any tokenizing.

A document is a record dict with its text and metadata in one of two forms:

- **v1**: ``{"text": ..., "metadata": [record, ...]}``;
- **v2** (one column per key, as the c4-en-html-with-metadata dataset ships it):
  ``{"text": ..., "metadata_html": [record, ...], "metadata_url": [...], ...}``; a record
  without ``key`` takes it from its column name.

Each record is ``{key, type: "global" | "local", value, char_start_idx, char_end_idx,
relative_start_pos, relative_end_pos, html_attrs: {attrs: [...], values: [...]}}``; local
records need character offsets ``0 <= start <= end <= len(text)``. ``parse_document`` is a
function of one record dict, so any reader (jsonl here, Parquet/Arrow/HF datasets elsewhere)
can feed it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

V2_PREFIX = "metadata_"
TYPES = ("global", "local")


class RecordError(ValueError):
    """A metadata record that cannot be used (the message names document and record)."""


@dataclass(frozen=True, slots=True)
class MetaRecord:
    """One metadata record of a document.

    Attributes:
        key: Metadata type (``html``, ``entity``, ``url``, ...).
        type: ``global`` (rendered into the prefix) or ``local`` (inserted into the text).
        value: Rendered value (for html: the tag name).
        start: First character of a local span.
        end: One past its last character (``start == end``: an empty span).
        rel_start: Order among insertions at ``start`` (html v2), or None.
        rel_end: Order among insertions at ``end``, or None.
        attrs: HTML attributes as ``(name, value)`` pairs.
    """

    key: str
    type: str
    value: str
    start: int = 0
    end: int = 0
    rel_start: int | None = None
    rel_end: int | None = None
    attrs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Document:
    """A document's text and its metadata records (in record order)."""

    text: str
    records: tuple[MetaRecord, ...]

    def keys(self) -> list[str]:
        """Keys that have at least one record, in first-record order."""
        return list(dict.fromkeys(r.key for r in self.records))


def raw_records(doc: Mapping) -> list[dict]:
    """The metadata records of a v1 or v2 document dict, each with its ``key``."""
    if "metadata" in doc and doc["metadata"] is not None:
        return list(doc["metadata"])
    out = []
    for column, value in doc.items():
        if not column.startswith(V2_PREFIX) or not value:
            continue
        for record in value:
            out.append({"key": column[len(V2_PREFIX) :], **record})
    return out


def _attrs(raw: object, where: str) -> tuple[tuple[str, str], ...]:
    if not raw:
        return ()
    names, values = raw.get("attrs") or [], raw.get("values") or []
    if len(names) != len(values):
        raise RecordError(f"{where}: html_attrs has {len(names)} attrs but {len(values)} values")
    return tuple((str(n), str(v)) for n, v in zip(names, values, strict=True))


def _offset(raw: Mapping, name: str, where: str) -> int:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{where}: local metadata needs an integer {name}, got {value!r}")
    return value


def _optional_int(raw: Mapping, name: str) -> int | None:
    value = raw.get(name)
    return None if value is None else int(value)


def parse_record(raw: Mapping, text_len: int, where: str) -> MetaRecord:
    """Check and convert one raw record (``where`` names document and record in errors).

    Raises:
        RecordError: Unknown type, missing key/value, or local offsets outside the text or
            inverted.
    """
    key, type_ = raw.get("key"), raw.get("type")
    if not key:
        raise RecordError(f"{where}: a metadata record needs a 'key'")
    where = f"{where} (key {key!r})"
    if type_ not in TYPES:
        raise RecordError(f"{where}: type must be 'global' or 'local', got {type_!r}")
    value = raw.get("value")
    if value is None:
        raise RecordError(f"{where}: a metadata record needs a 'value'")
    if type_ == "global":
        return MetaRecord(key=key, type=type_, value=str(value))
    start, end = _offset(raw, "char_start_idx", where), _offset(raw, "char_end_idx", where)
    if not 0 <= start <= text_len or not 0 <= end <= text_len:
        raise RecordError(
            f"{where}: span [{start}, {end}) lies outside the text of {text_len} characters"
        )
    if end < start:
        raise RecordError(f"{where}: span [{start}, {end}) is inverted (char_end_idx < start)")
    return MetaRecord(
        key=key,
        type=type_,
        value=str(value),
        start=start,
        end=end,
        rel_start=_optional_int(raw, "relative_start_pos"),
        rel_end=_optional_int(raw, "relative_end_pos"),
        attrs=_attrs(raw.get("html_attrs"), where),
    )


def parse_document(doc: Mapping, text_key: str = "text", name: str = "document") -> Document:
    """A checked ``Document`` from a v1 or v2 record dict.

    Args:
        doc: The record (``text`` plus ``metadata`` or ``metadata_<key>`` columns).
        text_key: Field holding the text.
        name: Names the document in errors (e.g. ``docs.jsonl:12``).

    Raises:
        RecordError: No text, or a bad metadata record (names document and record number).
    """
    text = doc.get(text_key)
    if not isinstance(text, str):
        raise RecordError(f"{name}: no text field {text_key!r}")
    records = tuple(
        parse_record(raw, len(text), f"{name}: metadata record {i}")
        for i, raw in enumerate(raw_records(doc))
    )
    return Document(text, records)


def has_records(doc: Mapping) -> bool:
    """Whether a record dict is in the records format (v1 ``metadata`` or v2 columns)."""
    return isinstance(doc.get("metadata"), list) or any(
        k.startswith(V2_PREFIX) and isinstance(v, list) for k, v in doc.items()
    )


def keep_keys(document: Document, keys: Sequence[str]) -> Document:
    """The document with only the records of ``keys``."""
    wanted = set(keys)
    return Document(document.text, tuple(r for r in document.records if r.key in wanted))
