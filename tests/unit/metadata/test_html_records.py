"""Real HTML -> text + tag spans: offsets cover the tags' text, nesting order survives rendering
and cutting (the rendered tags re-parse to the same text)."""

from __future__ import annotations

import re

import pytest

from megatron.metadata.html_records import cut_record, html_to_record
from megatron.metadata.local import LocalFormat, render_with_local
from megatron.metadata.records import parse_document

PAGE = (
    "<html><head><title>Demo  page</title><style>p {color: red}</style></head>"
    '<body><p class="intro" id="p1">An <a href="x" class="ext">apple</a> a <b><i>day</i></b>'
    "</p><br><table><tr><td></td><td>cell</td></tr></table><p>un<em>closed</p></body></html>"
)
ALL = LocalFormat(attributes_to_keep=None, keep_empty_tags=("td", "br"), dropped_tags=())


def _spans(record):
    return {(r["value"], record["text"][r["char_start_idx"] : r["char_end_idx"]])
            for r in record["metadata"] if r["type"] == "local"}  # fmt: skip


def test_text_title_and_spans():
    record = html_to_record(PAGE, "https://example.org/demo")
    assert record["text"] == "An apple a day\ncell\nunclosed\n"
    globals_ = [(r["key"], r["value"]) for r in record["metadata"] if r["type"] == "global"]
    assert globals_ == [("url", "https://example.org/demo"), ("title", "Demo page")]
    spans = _spans(record)
    assert {("a", "apple"), ("b", "day"), ("i", "day"), ("td", "cell"), ("td", ""),
            ("em", "closed"), ("p", "An apple a day")} <= spans  # fmt: skip
    a = next(r for r in record["metadata"] if r.get("value") == "a")
    assert a["html_attrs"] == {"attrs": ["href", "class"], "values": ["x", "ext"]}


def test_rendered_tags_nest_as_in_the_page():
    record = html_to_record(PAGE)
    rendered = render_with_local(parse_document(record), ["html"], lf=ALL)
    assert "<b><i>day</i></b>" in rendered.text
    assert '<p class:intro id:p1>An <a href:x class:ext>apple</a> a' in rendered.text
    assert "<table><tr><td></td><td>cell</td>" in rendered.text
    text = "".join(c for c, m in zip(rendered.text, rendered.mask, strict=True) if not m)
    assert text == record["text"]


def _balanced(rendered: str) -> bool:
    stack = []
    for closing, name in re.findall(r"<(/?)([a-z0-9]+)[^>]*>", rendered):
        if not closing:
            stack.append(name)
        elif not stack or stack.pop() != name:
            return False
    return not stack


@pytest.mark.parametrize("size", [5, 9, 13])
def test_cut_pieces_keep_text_and_balanced_tags(size):
    record = html_to_record(PAGE)
    pieces = cut_record(record, size)
    assert "".join(p["text"] for p in pieces) == record["text"]
    for piece in pieces:
        rendered = render_with_local(parse_document(piece), ["html"], lf=ALL)
        assert _balanced(rendered.text.replace("<br></br>", "")), rendered.text


def test_pydoc_page_of_a_real_module():
    from megatron.metadata.pydoc_corpus import pydoc_records

    (record,) = pydoc_records(("json.decoder",))
    doc = parse_document(record)  # offsets checked
    assert "class JSONDecodeError" in doc.text and "<stdlib>" not in record["metadata"][0]["value"]
    rendered = render_with_local(doc, ["html", "title", "url"])
    assert rendered.prefix == (
        "Title: Python: module json.decoder | url: https://docs.python.org/3/library/json.html |||"
    )
    assert "<strong class:bigsection>Classes</strong>" in rendered.text
