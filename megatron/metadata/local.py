"""Render a document's metadata records: local ones inline at their offsets, global ones as a prefix.

The rules (BigScience's metadata linearization, re-stated in docs/metadata_local.md):

- Local renderers give ``(start text, end text)`` per record: html ``<tag class:x id:y>`` /
  ``</tag>`` (only the kept attributes; a tag with no content is dropped unless it is a table
  part; ``<body>`` is always dropped), entity ``("", " [[Name]]")``, entity_paragraph
  ``(" |Name|", "")`` (``entity_setting end``: after the span), others ``[key: v]``/``[/key: v]``.
- A key whose records carry ``relative_start_pos`` (html v2) is first collated: per character
  index, its start/end texts ordered by their relative positions, concatenated and wrapped in
  the key's optional special tokens (``<HTML>``...``</HTML>``); each index then is one empty span.
- Spans are ordered by (position of their key in the metadata list, collated after plain,
  end index); at each character index the texts are emitted as: ends of spans with content,
  starts of empty spans, ends of empty spans, starts of spans with content; starts are
  prepended (so the span that ends last opens first), ends appended.
- Every inserted character is marked in a character mask.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from megatron.metadata.records import Document, MetaRecord, RecordError
from megatron.metadata.render import PrefixFormat, render_piece
from megatron.registry import Registry

TABLE_PARTS = ("table", "tr", "th", "td", "colgroup", "thead", "tfoot", "tbody")


@dataclass(frozen=True, slots=True)
class LocalFormat:
    """How local metadata is written (the BigScience v2 settings are the defaults).

    Attributes:
        attributes_to_keep: HTML attributes written (None: all).
        keep_empty_tags: Tags written even when their span is empty (table parts).
        dropped_tags: Tags never written (``body``).
        entity_setting: ``beg`` or ``end``: where entity_paragraph names go.
        special_start: Per key, text written before each collated insertion (``<HTML>``).
        special_end: Per key, text written after it (``</HTML>``).
        prefix_tokens: Per local key, the word the prefix shows for it when
            ``local_in_prefix`` is set (default: the key itself).
        local_in_prefix: Name the local types present in the prefix
            (``--add-local-metadata-special-tokens-in-prefix``).
    """

    attributes_to_keep: tuple[str, ...] | None = ("class", "id")
    keep_empty_tags: tuple[str, ...] = TABLE_PARTS
    dropped_tags: tuple[str, ...] = ("body",)
    entity_setting: str = "beg"
    special_start: Mapping[str, str] = field(default_factory=dict)
    special_end: Mapping[str, str] = field(default_factory=dict)
    prefix_tokens: Mapping[str, str] = field(default_factory=dict)
    local_in_prefix: bool = False

    def __post_init__(self) -> None:
        if self.entity_setting not in ("beg", "end"):
            raise ValueError(f"--entity-setting: 'beg' or 'end', got {self.entity_setting!r}")


LocalRenderer = Callable[[MetaRecord, PrefixFormat, LocalFormat], "tuple[str, str] | None"]
LOCAL_RENDERERS: Registry[LocalRenderer] = Registry("local metadata key renderer", "--metadata-keys")
"""Local record key -> renderer; keys without one render as ``[key: value]...[/key: value]``."""


def register_local(key: str) -> Callable[[LocalRenderer], LocalRenderer]:
    """Register the local renderer of ``key`` (None from it: the record is not written)."""

    def wrap(fn: LocalRenderer) -> LocalRenderer:
        LOCAL_RENDERERS.add(key, fn)
        return fn

    return wrap


@register_local("html")
def _html(r: MetaRecord, fmt: PrefixFormat, lf: LocalFormat) -> tuple[str, str] | None:
    tag = r.value
    if tag in lf.dropped_tags or (r.end - r.start <= 0 and tag not in lf.keep_empty_tags):
        return None
    keep = lf.attributes_to_keep
    attrs = " ".join(f"{a}:{v}" for a, v in r.attrs if keep is None or a in keep)
    return f"<{tag}{' ' + attrs if attrs else ''}>", f"</{tag}>"


@register_local("entity")
def _entity(r: MetaRecord, fmt: PrefixFormat, lf: LocalFormat) -> tuple[str, str]:
    return "", f" [[{r.value.replace('_', ' ')}]]"


@register_local("entity_paragraph")
def _entity_paragraph(r: MetaRecord, fmt: PrefixFormat, lf: LocalFormat) -> tuple[str, str]:
    name = f" |{r.value.replace('_', ' ')}|"
    return (name, "") if lf.entity_setting == "beg" else ("", name)


def render_local_record(r: MetaRecord, fmt: PrefixFormat, lf: LocalFormat) -> tuple[str, str] | None:
    """``(start text, end text)`` of one local record (None: not written)."""
    if r.key in LOCAL_RENDERERS:
        return LOCAL_RENDERERS[r.key](r, fmt, lf)
    pair = f"{r.key}{fmt.key_value_sep}{r.value}"
    return f"[{pair}]", f"[/{pair}]"


@dataclass(frozen=True, slots=True)
class _Span:
    start: int
    end: int
    priority: int
    texts: tuple[str, str]


def _collate(key: str, records: list[MetaRecord], priority: int, fmt, lf, name) -> list[_Span]:
    """One empty span per character index: the key's insertions there, by relative position."""
    at: dict[int, dict[int, str]] = defaultdict(dict)
    for r in records:
        if r.rel_start is None or r.rel_end is None:
            raise RecordError(
                f"{name}: key {key!r} has relative positions on some records only; give "
                "relative_start_pos and relative_end_pos on all or none"
            )
        texts = render_local_record(r, fmt, lf)
        if texts is None:
            continue
        for index, rel, text in ((r.start, r.rel_start, texts[0]), (r.end, r.rel_end, texts[1])):
            if rel in at[index]:
                raise RecordError(
                    f"{name}: key {key!r} has two insertions at character {index} with "
                    f"relative position {rel}"
                )
            if text:
                at[index][rel] = text
    spans = []
    for index, texts in at.items():
        joined = "".join(texts[rel] for rel in sorted(texts))
        if joined:
            joined = lf.special_start.get(key, "") + joined + lf.special_end.get(key, "")
        spans.append(_Span(index, index, priority, (joined, "")))
    return spans


def _spans(doc: Document, order: Sequence[str], fmt, lf, name: str) -> list[_Span]:
    by_key: dict[str, list[MetaRecord]] = defaultdict(list)
    for r in doc.records:
        if r.type == "local" and r.key in order:
            by_key[r.key].append(r)
    spans: list[_Span] = []
    for key, records in by_key.items():
        rank = 2 * list(order).index(key)
        if records[0].rel_start is not None:
            spans += _collate(key, records, rank + 1, fmt, lf, name)
            continue
        for r in records:
            texts = render_local_record(r, fmt, lf)
            if texts is not None:
                spans.append(_Span(r.start, r.end, rank, texts))
    return sorted(spans, key=lambda s: (s.priority, s.end))


def insert_local(
    doc: Document,
    order: Sequence[str],
    fmt: PrefixFormat = PrefixFormat(),
    lf: LocalFormat = LocalFormat(),
    name: str = "document",
) -> tuple[str, list[bool]]:
    """The text with its local metadata inserted, and the mask of inserted characters.

    Args:
        doc: The document (only local records of keys in ``order`` are written).
        order: The metadata list (its order ranks the local types).
        fmt: Separators (the generic renderer's ``key: value``).
        lf: Local metadata settings.
        name: Names the document in errors.
    """
    # slots: 0 ends with content, 1 starts of empty spans, 2 ends of empty spans, 3 starts
    slots: list[dict[int, list[str]]] = [defaultdict(list) for _ in range(4)]
    for s in _spans(doc, order, fmt, lf, name):
        empty = s.start == s.end
        slots[1 if empty else 3][s.start].insert(0, s.texts[0])
        slots[2 if empty else 0][s.end].append(s.texts[1])
    out: list[str] = []
    mask: list[bool] = []
    text = doc.text
    for index in range(len(text) + 1):
        for slot in slots:
            for piece in slot.get(index, ()):
                out.append(piece)
                mask.extend([True] * len(piece))
        if index < len(text):
            out.append(text[index])
            mask.append(False)
    return "".join(out), mask


def global_prefix(
    doc: Document, order: Sequence[str], fmt: PrefixFormat = PrefixFormat(),
    lf: LocalFormat = LocalFormat(),
) -> str:
    """The prefix: kept global keys (and, with ``local_in_prefix``, the local types present)
    in metadata-list order, joined by the separator, ending with the prefix separator."""
    pieces: dict[str, str] = {}
    for r in doc.records:
        if r.key not in order:
            continue
        if r.type == "global":
            pieces[r.key] = render_piece(r.key, r.value, fmt).text
        elif lf.local_in_prefix:
            pieces[r.key] = lf.prefix_tokens.get(r.key, r.key)
    shown = [pieces[k] for k in order if k in pieces]
    if not shown:
        return ""
    return fmt.start_seq + fmt.sep.join(shown) + fmt.prefix_sep


@dataclass(frozen=True, slots=True)
class RenderedLocal:
    """What the model reads: ``prefix`` then ``text`` (local metadata inline, marked in mask)."""

    prefix: str
    text: str
    mask: list[bool]


def render_with_local(
    doc: Document, order: Sequence[str], fmt: PrefixFormat = PrefixFormat(),
    lf: LocalFormat = LocalFormat(), name: str = "document",
) -> RenderedLocal:
    """Prefix and text with local metadata of a document whose records were already sampled;
    the text starts with " " when there is a prefix (that space is text, not metadata)."""
    prefix = global_prefix(doc, order, fmt, lf)
    text, mask = insert_local(doc, order, fmt, lf, name)
    if prefix:
        return RenderedLocal(prefix, " " + text, [False, *mask])
    return RenderedLocal("", text, mask)
