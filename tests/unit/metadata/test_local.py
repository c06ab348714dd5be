"""Local metadata rendering against the BigScience linearization (expected strings and masks are
the reference implementation's output for these documents, bigscience-workshop/metadata@c9d4553,
v2 html settings), plus the record checks."""

from __future__ import annotations

import pytest

from megatron.metadata.local import LocalFormat, render_with_local
from megatron.metadata.records import RecordError, parse_document

TEXT1 = "Apples. Read the guide at Kew today."
DOC1 = {
    "text": TEXT1,
    "metadata": [
        {"key": "url", "type": "global", "value": "https://www.example.com/a%20b"},
        {"key": "timestamp", "type": "global", "value": "2019-04-21T10:00:00.000Z"},
        # <body><p class=intro>Apples. Read the <a href=.. class=ext id=g1>guide</a> at Kew
        # today.</p><br></body>
        {"key": "html", "type": "local", "value": "body", "char_start_idx": 0,
         "char_end_idx": len(TEXT1), "relative_start_pos": 0, "relative_end_pos": 2,
         "html_attrs": {"attrs": [], "values": []}},
        {"key": "html", "type": "local", "value": "p", "char_start_idx": 0,
         "char_end_idx": len(TEXT1), "relative_start_pos": 1, "relative_end_pos": 0,
         "html_attrs": {"attrs": ["class"], "values": ["intro"]}},
        {"key": "html", "type": "local", "value": "a", "char_start_idx": 17, "char_end_idx": 22,
         "relative_start_pos": 0, "relative_end_pos": 0,
         "html_attrs": {"attrs": ["href", "class", "id"], "values": ["https://x.org", "ext", "g1"]}},
        {"key": "html", "type": "local", "value": "br", "char_start_idx": len(TEXT1),
         "char_end_idx": len(TEXT1), "relative_start_pos": 1, "relative_end_pos": 3,
         "html_attrs": {"attrs": [], "values": []}},
        {"key": "entity", "type": "local", "value": "Royal_Botanic_Gardens,_Kew",
         "char_start_idx": 26, "char_end_idx": 29},
    ],
}  # fmt: skip

TEXT2 = "An apple is an edible fruit produced by an apple tree (Malus domestica)."
DOC2 = {
    "text": TEXT2,
    "metadata": [
        {"key": "entity", "type": "local", "value": "Apple", "char_start_idx": 3, "char_end_idx": 8},
        {"key": "topic", "type": "local", "value": "fruit", "char_start_idx": 3, "char_end_idx": 27},
        {"key": "topic", "type": "local", "value": "tree", "char_start_idx": 15, "char_end_idx": 53},
        {"key": "entity", "type": "local", "value": "Malus_domestica", "char_start_idx": 55,
         "char_end_idx": 70},
        {"key": "entity_paragraph", "type": "local", "value": "Apple", "char_start_idx": 0,
         "char_end_idx": 72, "relative_start_pos": 0, "relative_end_pos": 0},
        {"key": "entity_paragraph", "type": "local", "value": "Malus_domestica",
         "char_start_idx": 0, "char_end_idx": 72, "relative_start_pos": 1, "relative_end_pos": 1},
        {"key": "title", "type": "global", "value": "Apple"},
    ],
}  # fmt: skip

WRAPPERS = {
    "special_start": {"entity_paragraph": "<ENTITY_CHAIN>", "html": "<HTML>"},
    "special_end": {"entity_paragraph": " </ENTITY_CHAIN> ", "html": "</HTML>"},
    "prefix_tokens": {"entity_paragraph": "entity"},
}

CASE1_0 = {
    'prefix': 'Year: 2019 | Month: April | url: https://www.example.com/a b |||',
    'text': '<p class:intro>Apples. Read the <a class:ext id:g1>guide</a> at Kew [[Royal Botanic Gardens, Kew]] today.</p>',
    'mask': (
        '11111111111111100000000000000000111111111111111111100000111100000001111111111111'
        '11111111111111111100000001111'
    ),
}
CASE1_1 = {
    'prefix': 'url: https://www.example.com/a b | Year: 2019 | Month: April | entity | html |||',
    'text': '<HTML><p class:intro></HTML>Apples. Read the <HTML><a class:ext id:g1></HTML>guide<HTML></a></HTML> at Kew [[Royal Botanic Gardens, Kew]] today.<HTML></p></HTML>',
    'mask': (
        '11111111111111111111111111110000000000000000011111111111111111111111111111111000'
        '00111111111111111110000000111111111111111111111111111111100000001111111111111111'
        '1'
    ),
}
CASE2_0 = {
    'prefix': 'Title: Apple |||',
    'text': '<ENTITY_CHAIN> |Apple| |Malus domestica| </ENTITY_CHAIN> An [topic: fruit]apple [[Apple]] is an [topic: tree]edible fruit[/topic: fruit] produced by an apple tree[/topic: tree] (Malus domestica [[Malus domestica]]).',
    'mask': (
        '11111111111111111111111111111111111111111111111111111111100011111111111111000001'
        '11111111100000001111111111111000000000000111111111111111000000000000000000000000'
        '0011111111111111000000000000000001111111111111111111100'
    ),
}
CASE2_1 = {
    'prefix': 'topic | entity | entity |||',
    'text': 'An [topic: fruit]apple [[Apple]] is an [topic: tree]edible fruit[/topic: fruit] produced by an apple tree[/topic: tree] (Malus domestica [[Malus domestica]]).<ENTITY_CHAIN> |Apple| |Malus domestica| </ENTITY_CHAIN> ',
    'mask': (
        '00011111111111111000001111111111000000011111111111110000000000001111111111111110'
        '00000000000000000000000001111111111111100000000000000000111111111111111111110011'
        '1111111111111111111111111111111111111111111111111111111'
    ),
}


def _check(doc: dict, order: list[str], expected: dict, **local) -> None:
    rendered = render_with_local(parse_document(doc), order, lf=LocalFormat(**local))
    assert rendered.prefix == expected["prefix"]
    # the anchor's mask covers the text without the " " that follows a prefix
    assert rendered.text == " " + expected["text"]
    assert "".join("1" if m else "0" for m in rendered.mask) == "0" + "".join(expected["mask"])


def test_p_with_a_inside_entity_timestamp_url():
    """<body> dropped, the empty <br> dropped, href dropped (class/id kept), entity after its span."""
    _check(DOC1, ["html", "entity", "timestamp", "url"], CASE1_0)


def test_wrappers_and_local_types_in_prefix():
    _check(DOC1, ["url", "timestamp", "entity", "html"], CASE1_1, **WRAPPERS, local_in_prefix=True)


def test_overlapping_spans_and_entity_paragraph_at_start():
    _check(DOC2, ["entity", "topic", "entity_paragraph", "title"], CASE2_0, **WRAPPERS)


def test_entity_paragraph_at_end_and_metadata_list_order():
    _check(
        DOC2, ["topic", "entity_paragraph", "entity"], CASE2_1,
        **WRAPPERS, local_in_prefix=True, entity_setting="end",
    )  # fmt: skip


def test_nested_tags_at_one_index_follow_relative_positions():
    # The reference's own nested-html example (attributes all kept, no empty-tag rule).
    text = "An apple is an edible fruit produced by an apple tree (Malus domestica)."
    html = [
        ("b", 3, 8, 0, 0, [], []),
        ("b", 43, 53, 1, 0, ["class", "id", "href"], ["level1", "4", "https://test.org"]),
        ("i", 43, 48, 2, 0, ["class"], ["level2"]),
    ]
    doc = {
        "text": text,
        "metadata": [
            {"key": "html", "type": "local", "value": t, "char_start_idx": s, "char_end_idx": e,
             "relative_start_pos": rs, "relative_end_pos": re_,
             "html_attrs": {"attrs": a, "values": v}}
            for t, s, e, rs, re_, a, v in html
        ],
    }  # fmt: skip
    lf = LocalFormat(attributes_to_keep=None, keep_empty_tags=(), dropped_tags=(), **WRAPPERS)
    rendered = render_with_local(parse_document(doc), ["html"], lf=lf)
    assert rendered.text == (
        "An <HTML><b></HTML>apple<HTML></b></HTML> is an edible fruit "
        "produced by an <HTML><b class:level1 id:4 href:https://test.org>"
        "<i class:level2></HTML>apple<HTML></i></HTML> tree<HTML></b>"
        "</HTML> (Malus domestica)."
    )
    masked = "".join(c for c, m in zip(rendered.text, rendered.mask, strict=True) if not m)
    assert masked == text


def test_v2_columns_equal_v1():
    v2 = {"text": TEXT1}
    for r in DOC1["metadata"]:
        v2.setdefault(f"metadata_{r['key']}", []).append({k: v for k, v in r.items() if k != "key"})
    order = ["html", "entity", "timestamp", "url"]
    assert render_with_local(parse_document(v2), order) == render_with_local(
        parse_document(DOC1), order
    )


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [(3, 99, "outside the text"), (-1, 4, "outside the text"), (9, 4, "inverted")],
)
def test_bad_offsets_name_document_and_record(start, end, message):
    doc = {"text": "short text", "metadata": [
        {"key": "url", "type": "global", "value": "u"},
        {"key": "entity", "type": "local", "value": "X", "char_start_idx": start, "char_end_idx": end},
    ]}  # fmt: skip
    with pytest.raises(RecordError, match=rf"docs.jsonl:7: metadata record 1 \(key 'entity'\).*{message}"):
        parse_document(doc, name="docs.jsonl:7")


def test_partial_relative_positions_are_refused():
    doc = {"text": "abcdef", "metadata": [
        {"key": "html", "type": "local", "value": "b", "char_start_idx": 0, "char_end_idx": 2,
         "relative_start_pos": 0, "relative_end_pos": 0},
        {"key": "html", "type": "local", "value": "i", "char_start_idx": 2, "char_end_idx": 4},
    ]}  # fmt: skip
    with pytest.raises(RecordError, match="relative positions on some records only"):
        render_with_local(parse_document(doc, name="d.jsonl:1"), ["html"], name="d.jsonl:1")
