"""Prefix rendering (spec oracle 1) and the per-document choice (oracle 3's statistics)."""

from __future__ import annotations

import pytest

from megatron.config.fields import ConfigError
from megatron.metadata.render import (
    PrefixFormat,
    document_uniform,
    get_template,
    gets_prefix,
    render_document,
    url_domain,
)

META = {"url": "https://www.example.com/a%20b", "timestamp": "2019-04-21T10:00:00"}


def test_bigscience_prefix_exact_string():
    r = render_document("Hello world", META, ["url", "timestamp"])
    assert r.prefix == "url: https://www.example.com/a b | Year: 2019 | Month: April |||"
    assert r.text == " Hello world"
    assert r.malformed == ()


def test_bigscience_order_follows_the_metadata_list_not_the_document():
    r = render_document("Hello world", META, ["timestamp", "url"])
    assert r.prefix == "Year: 2019 | Month: April | url: https://www.example.com/a b |||"


def test_bigscience_other_renderers_and_separators():
    meta = {"title": "Apple", "website_description": "An encyclopedia", "lang": "en"}
    fmt = PrefixFormat(sep=" ; ", prefix_sep=" ###", start_seq="<m>")
    r = render_document("x", meta, ["lang", "title", "website_description"], fmt=fmt)
    assert r.prefix == "<m>lang: en ; Title: Apple ; Website Description: An encyclopedia ###"


def test_missing_keys_are_skipped_and_no_keys_means_no_prefix():
    r = render_document("Hello", {"url": None, "timestamp": "2020-01-02"}, ["url", "timestamp"])
    assert r.prefix == "Year: 2020 | Month: January |||"
    plain = render_document("Hello", {"url": "", "timestamp": None}, ["url", "timestamp"])
    assert (plain.prefix, plain.text) == ("", "Hello")


def test_malformed_url_and_date_are_kept_as_text_and_reported():
    r = render_document("t", {"url": "not a url", "timestamp": "yesterday"}, ["url", "timestamp"])
    assert r.prefix == "url: not a url | timestamp: yesterday |||"
    assert r.malformed == ("url", "timestamp")


@pytest.mark.parametrize(
    "url, domain",
    [
        ("https://en.wikipedia.org/wiki/Apple", "en.wikipedia.org"),
        ("http://www.example.de/2015/forum/article/21-new-project", "www.example.de"),
        ("https://github.com", "github.com"),
    ],
)
def test_meco_domain(url, domain):
    assert url_domain(url) == domain
    r = render_document("Doc text", {"url": url}, ["url"], template="meco")
    assert r.prefix == f"URL: {domain}\n\n"
    assert r.text == "Doc text"


def test_meco_malformed_and_long_url():
    r = render_document("d", {"url": "ftp:/broken"}, ["url"], template="meco")
    assert (r.prefix, r.malformed) == ("URL: ftp:/broken\n\n", ("url",))
    full = render_document(
        "d", {"url": "https://a.org/x"}, ["url"], "meco", PrefixFormat(short_url=False)
    )
    assert full.prefix == "URL: https://a.org/x\n\n"


def test_unknown_template_lists_known():
    with pytest.raises(ConfigError, match="^--metadata-template 'gpt': unknown metadata template; "
                                          "known: bigscience, meco$"):
        get_template("gpt")


def test_probability_half_over_10000_documents_and_deterministic():
    chosen = {i for i in range(10_000) if gets_prefix(1234, i, 0.5)}
    assert abs(len(chosen) / 10_000 - 0.5) <= 0.015  # 3 sigma
    assert chosen == {i for i in range(10_000) if gets_prefix(1234, i, 0.5)}
    other = {i for i in range(10_000) if gets_prefix(99, i, 0.5)}
    assert other != chosen  # the seed matters


def test_probability_edges_and_uniform_range():
    assert not any(gets_prefix(7, i, 0.0) for i in range(1000))
    assert all(gets_prefix(7, i, 1.0) for i in range(1000))
    values = [document_uniform(3, i) for i in range(2000)]
    assert 0.0 <= min(values) and max(values) < 1.0
    assert abs(sum(values) / len(values) - 0.5) < 0.02


def test_package_corpus_sections_and_urls():
    from email.message import Message

    from megatron.metadata.package_corpus import package_url, split_sections

    text = "a" * 10 + "\n\n" + "b" * 10 + "\n\n" + "c" * 30
    assert split_sections(text, 25) == ["a" * 10 + "\n\n" + "b" * 10, "c" * 30]
    assert "\n\n".join(split_sections(text, 25)) == text
    meta = Message()
    meta["Project-URL"] = "Documentation, https://docs.example.org"
    meta["Project-URL"] = "Source, https://github.com/x/y"
    assert package_url(meta) == "https://github.com/x/y"
    meta["Home-page"] = "https://example.org"
    assert package_url(meta) == "https://example.org"
