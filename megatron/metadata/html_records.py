"""Real HTML -> a metadata-records document: the visible text plus one ``html`` record per tag.

Parsed with the standard library's ``html.parser``. The text is the page's character data
(whitespace runs collapsed outside ``<pre>``, a newline at block boundaries; ``<script>``,
``<style>`` and ``<head>`` content left out; ``<title>`` kept as the ``title`` value). Every
element becomes ``{key: html, type: local, value: tag, char_start_idx, char_end_idx,
relative_start_pos, relative_end_pos, html_attrs}``: its span in the text, and its order among
all tag starts and ends at the same character (one counter per character index), which is how
the reference data set records nesting. Unclosed elements are closed by their parent's end tag
or at the end of the page.
"""

from __future__ import annotations

import re
from collections import defaultdict
from html.parser import HTMLParser

BLOCK = frozenset(
    "address article aside blockquote br dd div dl dt figure footer form h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table tbody td tfoot th thead tr ul".split()
)
VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
HIDDEN = frozenset(("script", "style", "head", "template"))
_SPACE = re.compile(r"\s+")


class _Spans(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.length = 0
        self.hidden = 0
        self.pre = 0
        self.title: list[str] = []
        self.in_title = False
        self.open: list[tuple[str, list, int, int]] = []
        self.records: list[dict] = []
        self.counter: dict[int, int] = defaultdict(int)

    def _emit(self, text: str) -> None:
        if text:
            self.parts.append(text)
            self.length += len(text)

    def _last(self) -> str:
        return self.parts[-1][-1] if self.parts else "\n"

    def _newline(self) -> None:
        if self.parts and self._last() != "\n":
            self._emit("\n")

    def _rel(self) -> int:
        rel = self.counter[self.length]
        self.counter[self.length] += 1
        return rel

    def _close(self, tag: str, attrs: list, start: int, rel_start: int) -> None:
        self.records.append({
            "key": "html", "type": "local", "value": tag,
            "char_start_idx": start, "char_end_idx": self.length,
            "relative_start_pos": rel_start, "relative_end_pos": self._rel(),
            "html_attrs": {"attrs": [a for a, _ in attrs], "values": [v or "" for _, v in attrs]},
        })  # fmt: skip

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in HIDDEN:
            self.hidden += 1
        if tag == "title":
            self.in_title = True
        if self.hidden:
            return
        if tag in BLOCK:
            self._newline()
        if tag == "pre":
            self.pre += 1
        if tag in VOID:
            self._close(tag, attrs, self.length, self._rel())
            return
        self.open.append((tag, attrs, self.length, self._rel()))

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in HIDDEN:
            self.hidden = max(0, self.hidden - 1)
            return
        if self.hidden or tag in VOID or all(t != tag for t, *_ in self.open):
            return
        while self.open:
            name, attrs, start, rel = self.open.pop()
            self._close(name, attrs, start, rel)
            if name == tag:
                break
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in BLOCK:
            self._newline()

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        if self.hidden:
            return
        if not self.pre:
            data = _SPACE.sub(" ", data)
            if self._last() in " \n":
                data = data.lstrip(" ")
        self._emit(data)


def html_to_record(html: str, url: str | None = None) -> dict:
    """A v1 records document ``{text, metadata}`` of an HTML page (with its url and title)."""
    parser = _Spans()
    parser.feed(html)
    parser.close()
    while parser.open:
        parser._close(*parser.open.pop())  # noqa: SLF001
    metadata: list[dict] = []
    if url:
        metadata.append({"key": "url", "type": "global", "value": url})
    title = _SPACE.sub(" ", "".join(parser.title)).strip()
    if title:
        metadata.append({"key": "title", "type": "global", "value": title})
    return {"text": "".join(parser.parts), "metadata": metadata + parser.records}


def _events(records: list[dict], a: int, b: int) -> dict[int, list[tuple]]:
    """Tag starts/ends inside ``[a, b]`` per index, in insertion order, for a cut document."""
    at: dict[int, list[tuple]] = defaultdict(list)
    for i, r in enumerate(records):
        s, e = r["char_start_idx"], r["char_end_idx"]
        if e < a or s > b or (e == a and s < a) or (s == b and e > b):
            continue
        # starts before the cut open first (outermost first); ends after it close last
        start_key = (0, s, r["relative_start_pos"]) if s < a else (1, r["relative_start_pos"], 0)
        end_key = (2, -s, -r["relative_start_pos"]) if e > b else (1, r["relative_end_pos"], 0)
        at[max(s, a)].append((start_key, i, "start"))
        at[min(e, b)].append((end_key, i, "end"))
    return at


def cut_record(doc: dict, max_chars: int) -> list[dict]:
    """Pieces of at most ``max_chars`` characters, cut after a newline where possible; each tag
    is clipped to the piece and the relative positions renumbered (still nesting-ordered)."""
    text = doc["text"]
    html = [r for r in doc["metadata"] if r["type"] == "local"]
    global_ = [r for r in doc["metadata"] if r["type"] == "global"]
    pieces, a = [], 0
    while a < len(text):
        b = min(len(text), a + max_chars)
        if b < len(text):
            newline = text.rfind("\n", a + max_chars // 2, b)
            b = newline + 1 if newline > 0 else b
        local: dict[int, dict] = {}
        for index, events in _events(html, a, b).items():
            for rel, (_, i, kind) in enumerate(sorted(events)):
                r = local.setdefault(i, {**html[i]})
                r[f"char_{kind}_idx"] = index - a
                r[f"relative_{kind}_pos"] = rel
        pieces.append({"text": text[a:b], "metadata": [*global_, *local.values()]})
        a = b
    return pieces
