"""Render document metadata as a text prefix (BigScience renderers or MeCo's URL template).

BigScience (bigscience-workshop/metadata): each key present in a document is rendered by its
renderer (``url: <unquoted url>``, ``Year: 2019 | Month: April``, ``Title: ...``), the pieces
are ordered by the metadata list (not by the document), joined with ``" | "``, and end with
``" |||"``; the text then starts with ``" "``. MeCo (Gao et al. 2025, arXiv 2501.01956):
``"URL: " + domain + "\\n\\n"``, the domain being the URL without its scheme, up to the first
``/``. Whether a document gets a prefix at all is a pure function of (seed, document index), so
it does not depend on sharding or the number of workers.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus, urlsplit

from megatron.registry import Registry

MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PrefixFormat:
    """Separators of a rendered prefix (the BigScience hydra keys, MeCo's prefix/suffix).

    Attributes:
        sep: Between two keys (``--metadata-sep``).
        key_value_sep: Between a key's name and its value (``--metadata-key-value-sep``).
        prefix_sep: Ends the prefix (``--metadata-prefix-sep``).
        start_seq: Starts the prefix (``--metadata-prefix-start-seq``).
        meco_prefix: MeCo's text before the domain (``--add-metadata-prefix``).
        meco_suffix: MeCo's text after the domain (``--add-metadata-suffix``).
        short_url: MeCo: the domain only (``--use-short-url``); else the whole URL.
    """

    sep: str = " | "
    key_value_sep: str = ": "
    prefix_sep: str = " |||"
    start_seq: str = ""
    meco_prefix: str = "URL: "
    meco_suffix: str = "\n\n"
    short_url: bool = True


@dataclass(frozen=True, slots=True)
class Piece:
    """One rendered key: its text and whether the value parsed (False: kept as text)."""

    text: str
    well_formed: bool = True


Renderer = Callable[[str, PrefixFormat], Piece]
RENDERERS: Registry[Renderer] = Registry("metadata key renderer", "--metadata-keys")
"""Key name -> renderer; keys without one render as ``key: value``."""


def register_renderer(*keys: str) -> Callable[[Renderer], Renderer]:
    """Register a renderer for metadata ``keys``."""

    def wrap(fn: Renderer) -> Renderer:
        for key in keys:
            RENDERERS.add(key, fn)
        return fn

    return wrap


def is_web_url(value: str) -> bool:
    """An ``http(s)://host/...`` URL (anything else is kept as text and reported)."""
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and " " not in value.strip()


def url_domain(value: str) -> str:
    """MeCo's short URL: without ``http(s)://``, up to the first ``/`` (``en.wikipedia.org``)."""
    rest = value.strip().split("://", 1)[-1]
    return rest.split("/", 1)[0]


@register_renderer("url")
def _url(value: str, fmt: PrefixFormat) -> Piece:
    if not is_web_url(value):
        return Piece(f"url{fmt.key_value_sep}{value}", well_formed=False)
    return Piece(f"url{fmt.key_value_sep}{unquote_plus(value.strip())}")


@register_renderer("timestamp")
def _timestamp(value: str, fmt: PrefixFormat) -> Piece:
    try:
        when = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        return Piece(f"timestamp{fmt.key_value_sep}{value}", well_formed=False)
    kv = fmt.key_value_sep
    return Piece(f"Year{kv}{when.year}{fmt.sep}Month{kv}{MONTHS[when.month - 1]}")


def _labelled(label: str) -> Renderer:
    def render(value: str, fmt: PrefixFormat) -> Piece:
        return Piece(f"{label}{fmt.key_value_sep}{value}")

    return render


register_renderer("title")(_labelled("Title"))
register_renderer("website_description", "website_desc")(_labelled("Website Description"))
register_renderer("datasource", "generation_datasource")(_labelled("Datasource"))
register_renderer("length", "generation_length_text")(_labelled("Text Length"))


def render_piece(key: str, value: str, fmt: PrefixFormat) -> Piece:
    """Render one key by its renderer, or as ``key: value``."""
    if key not in RENDERERS:
        return Piece(f"{key}{fmt.key_value_sep}{value}")
    return RENDERERS[key](value, fmt)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A document with its prefix: ``prefix + text`` is what the model reads.

    Attributes:
        prefix: The metadata prefix ("" when the document has none of the keys).
        text: The document text (BigScience: preceded by " " when there is a prefix).
        malformed: Keys whose values did not parse and were kept as text.
    """

    prefix: str
    text: str
    malformed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """A prefix template: which keys it can render and how.

    Attributes:
        render: ``(text, values in list order, format) -> Rendered``.
        keys: The only keys it renders (None: any).
    """

    render: Callable[[str, Sequence[tuple[str, str]], PrefixFormat], Rendered]
    keys: tuple[str, ...] | None = None


TEMPLATES: Registry[TemplateSpec] = Registry("metadata template", "--metadata-template")
"""``--metadata-template`` value -> template (every entry is registered in this module)."""


def register_template(name: str, keys: tuple[str, ...] | None = None):  # noqa: ANN201
    """Register a prefix template under ``name`` (``--metadata-template``)."""

    def wrap(fn):  # noqa: ANN001, ANN202
        TEMPLATES.add(name, TemplateSpec(render=fn, keys=keys))
        return fn

    return wrap


@register_template("bigscience")
def _bigscience(text: str, values: Sequence[tuple[str, str]], fmt: PrefixFormat) -> Rendered:
    pieces = [(key, render_piece(key, value, fmt)) for key, value in values]
    if not pieces:
        return Rendered("", text)
    prefix = fmt.start_seq + fmt.sep.join(p.text for _, p in pieces) + fmt.prefix_sep
    malformed = tuple(key for key, p in pieces if not p.well_formed)
    return Rendered(prefix, " " + text, malformed)


@register_template("meco", keys=("url",))
def _meco(text: str, values: Sequence[tuple[str, str]], fmt: PrefixFormat) -> Rendered:
    if not values:
        return Rendered("", text)
    (_, url), *_ = values
    well_formed = is_web_url(url)
    shown = url_domain(url) if fmt.short_url and well_formed else url.strip()
    return Rendered(
        fmt.meco_prefix + shown + fmt.meco_suffix, text, () if well_formed else ("url",)
    )


def get_template(name: str) -> TemplateSpec:
    """``TEMPLATES.get(name)``.

    Raises:
        ConfigError: Unknown name (``--metadata-template``, with the known ones).
    """
    return TEMPLATES.get(name)


def render_document(
    text: str,
    metadata: Mapping[str, str | None],
    order: Sequence[str],
    template: str = "bigscience",
    fmt: PrefixFormat = PrefixFormat(),
) -> Rendered:
    """The document with the prefix of the keys of ``order`` it has (missing keys are skipped).

    Args:
        text: Document text.
        metadata: Key -> value (None or "" = missing).
        order: The metadata list: which keys, in which order.
        template: ``bigscience`` or ``meco``.
        fmt: Separators.
    """
    values = [(key, metadata[key]) for key in order if metadata.get(key)]
    return get_template(template).render(text, values, fmt)


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def document_uniform(seed: int, index: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, document index) (SplitMix64)."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (index & _MASK64)) / 2.0**64


def gets_prefix(seed: int, index: int, probability: float) -> bool:
    """Whether document ``index`` gets its metadata prefix (with ``probability``)."""
    return document_uniform(seed, index) < probability
