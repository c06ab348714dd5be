"""Real documents with real metadata: the installed packages' metadata files."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def package_jsonl(tmp_path_factory) -> str:
    """40 installed packages as jsonl (text cut to 1,500 characters to keep tests fast)."""
    from megatron.metadata.package_corpus import package_records

    records = package_records()[:40]
    assert len(records) >= 20, "the environment should hold at least 20 documented packages"
    path = tmp_path_factory.mktemp("packages") / "docs.jsonl"
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps({**r, "text": r["text"][:1500]}) + "\n")
    return str(path)
