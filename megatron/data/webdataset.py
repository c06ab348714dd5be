"""open_lm-style tokenized webdataset shards -> an indexed dataset (once).

A folder holds ``manifest.jsonl`` (one ``{"shard": NAME, "num_sequences": N}`` per line) and the
shards ``NAME.tar``; each sample of a shard is a ``.json`` member holding one JSON list of token
ids (a sequence, EOT tokens already inside, as open_lm writes them). Every sequence becomes one
document of the indexed dataset, in manifest order then shard member order, ids unchanged.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator

import numpy as np

from megatron.data.indexed import IndexedWriter
from megatron.data.readers import InputError


def read_manifest(path: str) -> list[dict]:
    """The manifest's records; each needs ``shard`` and ``num_sequences``.

    Raises:
        InputError: A line that is not such a record (names file:line).
    """
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                shard, count = str(record["shard"]), int(record["num_sequences"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise InputError(f"{path}:{number}: expected {{\"shard\": ..., \"num_sequences\": "
                                 f"...}} ({e!r})") from None
            records.append({"shard": shard, "num_sequences": count})
    if not records:
        raise InputError(f"{path}: the manifest lists no shard")
    return records


def shard_path(folder: str, shard: str) -> str:
    """``folder/shard`` with ``.tar`` added when the manifest names it without."""
    name = shard if shard.endswith(".tar") else f"{shard}.tar"
    return os.path.join(folder, name)


def iter_sequences(tar_path: str) -> Iterator[list[int]]:
    """The token lists of a shard's ``.json`` members, in member order.

    Raises:
        InputError: Unreadable tar, or a member that is not a list of integers (names it).
    """
    try:
        archive = tarfile.open(tar_path)
    except (OSError, tarfile.TarError) as e:
        raise InputError(f"{tar_path}: not a readable tar shard ({e})") from None
    with archive:
        for member in archive:
            if not member.isfile() or not member.name.endswith(".json"):
                continue
            data = archive.extractfile(member).read()
            try:
                ids = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InputError(f"{tar_path}: {member.name}: not JSON ({e})") from None
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise InputError(f"{tar_path}: {member.name}: expected a JSON list of token ids")
            yield ids


def convert_manifest(manifest: str, prefix: str, vocab_size: int) -> int:
    """Write the shards ``manifest`` lists as the indexed dataset ``prefix``; returns sequences.

    Raises:
        InputError: A missing shard, a count that differs from ``num_sequences``, an id outside
            the vocabulary (each names the shard).
    """
    folder = os.path.dirname(os.path.abspath(manifest))
    total = 0
    with IndexedWriter(prefix, vocab_size) as writer:
        for record in read_manifest(manifest):
            path = shard_path(folder, record["shard"])
            if not os.path.isfile(path):
                raise InputError(f"{manifest}: shard {record['shard']!r}: no such file {path}")
            count = 0
            for ids in iter_sequences(path):
                array = np.asarray(ids, dtype=np.int64)
                if array.size and (array.min() < 0 or array.max() >= vocab_size):
                    raise InputError(f"{path}: sequence {count}: token id outside the tokenizer's "
                                     f"vocabulary [0, {vocab_size}); use the tokenizer the shards "
                                     "were made with")
                writer.add_document(array)
                count += 1
            if count != record["num_sequences"]:
                raise InputError(f"{manifest}: shard {record['shard']!r} holds {count} sequences, "
                                 f"the manifest says {record['num_sequences']}")
            total += count
    return total


def write_shards(folder: str, sequences: list[list[int]], per_shard: int,
                 manifest: str = "manifest.jsonl") -> str:
    """Write ``sequences`` as open_lm-style shards plus their manifest (tests and demos)."""
    import io

    os.makedirs(folder, exist_ok=True)
    lines = []
    for start in range(0, len(sequences), per_shard):
        name = f"shard-{start // per_shard:05d}"
        with tarfile.open(os.path.join(folder, f"{name}.tar"), "w") as archive:
            for k, ids in enumerate(sequences[start : start + per_shard]):
                data = json.dumps(ids).encode()
                info = tarfile.TarInfo(f"{start + k:08d}.json")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        count = len(sequences[start : start + per_shard])
        lines.append(json.dumps({"shard": name, "num_sequences": count}))
    path = os.path.join(folder, manifest)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
