"""A real corpus with real metadata that ships with every Python environment: the installed
distributions' own metadata files (``importlib.metadata``).

Each installed package is one document: its long description (the PyPI page text) is the text,
and its core metadata are the document's metadata: ``url`` (Home-page, else the first
Project-URL, preferring Homepage/Source), ``title`` (the name), ``website_description`` (the
one-line summary), ``topics`` (the ``Topic ::`` classifiers) and ``classifiers`` (all of them).
Long descriptions can be cut into sections at paragraph breaks, each carrying its package's
metadata (as BigScience gives every chunk of a document the same prefix); held-out packages are
chosen by package, so no section of an evaluation package is trained on.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import json
import os
from collections.abc import Iterable

MIN_TEXT_CHARS = 500
"""Packages with shorter descriptions (a one-line README) are left out."""

URL_LABELS = ("homepage", "home", "source", "source code", "repository", "code", "github")


def package_url(meta) -> str | None:  # noqa: ANN001  (email.message.Message)
    """The package's home page: ``Home-page``, else its best ``Project-URL``."""
    home = (meta.get("Home-page") or "").strip()
    if home and home.upper() != "UNKNOWN":
        return home
    urls = []
    for entry in meta.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        urls.append((label.strip().lower(), url.strip()))
    for wanted in URL_LABELS:
        for label, url in urls:
            if label == wanted and url:
                return url
    return urls[0][1] if urls and urls[0][1] else None


def package_record(dist: importlib_metadata.Distribution) -> dict | None:
    """One document with metadata, or None for a package without a real description."""
    meta = dist.metadata
    text = (meta.get_payload() or meta.get("Description") or "").strip()
    if len(text) < MIN_TEXT_CHARS:
        return None
    classifiers = meta.get_all("Classifier") or []
    topics = [c.removeprefix("Topic :: ") for c in classifiers if c.startswith("Topic :: ")]
    return {
        "text": text,
        "url": package_url(meta),
        "title": meta["Name"],
        "website_description": (meta.get("Summary") or "").strip() or None,
        "topics": topics or None,
        "classifiers": classifiers or None,
    }


def package_records(dists: Iterable[importlib_metadata.Distribution] | None = None) -> list[dict]:
    """Every installed package with a description, once per name, sorted by name."""
    seen: dict[str, dict] = {}
    for dist in importlib_metadata.distributions() if dists is None else dists:
        name = (dist.metadata["Name"] or "").lower()
        if name and name not in seen:
            record = package_record(dist)
            if record is not None:
                seen[name] = record
    return [seen[name] for name in sorted(seen)]


def split_sections(text: str, max_chars: int) -> list[str]:
    """Consecutive paragraphs (blank-line separated) joined up to about ``max_chars`` each."""
    sections, current = [], ""
    for paragraph in text.split("\n\n"):
        if current and len(current) + 2 + len(paragraph) > max_chars:
            sections.append(current)
            current = paragraph
        else:
            current = f"{current}\n\n{paragraph}" if current else paragraph
    if current.strip():
        sections.append(current)
    return sections


def write_package_corpus(
    out_dir: str, eval_every: int = 10, max_chars: int | None = None
) -> tuple[str, str, int, int]:
    """Write ``train.jsonl`` and ``eval.jsonl`` (every ``eval_every``-th package) to ``out_dir``.

    Args:
        out_dir: Output directory.
        eval_every: Hold out every N-th package (sorted by name).
        max_chars: Cut descriptions into sections of about this many characters (None: whole).

    Returns:
        (train path, eval path, train documents, eval documents).
    """
    os.makedirs(out_dir, exist_ok=True)
    records = package_records()

    def documents(rows: list[dict]) -> list[dict]:
        if max_chars is None:
            return rows
        return [{**r, "text": part} for r in rows for part in split_sections(r["text"], max_chars)]

    train = documents([r for i, r in enumerate(records) if i % eval_every != eval_every - 1])
    held_out = documents([r for i, r in enumerate(records) if i % eval_every == eval_every - 1])
    paths = []
    for name, rows in (("train", train), ("eval", held_out)):
        path = os.path.join(out_dir, f"{name}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        paths.append(path)
    return paths[0], paths[1], len(train), len(held_out)
