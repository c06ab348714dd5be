"""Data integrity at open time: every corrupt or mismatched input is one line naming its file.

Checked before training reads a sample (and under ``--dry-run`` where it is cheap):

- ``.idx``: the magic, version, dtype code, and that the header's counts fit the file's size;
- ``.bin``: its length equals what the index says (a cut or padded file is refused);
- token ids below the vocabulary size (a cheap sample by default, every token with
  ``--check-data``);
- an empty dataset (no documents or no tokens);
- the dataset's ``<prefix>_meta.json`` sidecar (written by preprocessing): its tokenizer's type,
  file hashes and vocabulary size must match this run's tokenizer. Datasets without a sidecar
  (made before it existed) are accepted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from megatron.config.fields import ConfigError


class DataError(ConfigError):
    """A data file that cannot be trained on as given; the message names the file and the fix."""

INDEX_MAGIC = b"MMIDIDX\x00\x00"
HEADER_BYTES = len(INDEX_MAGIC) + 8 + 1 + 8 + 8
# megatron-core's dtype codes (indexed_dataset.DType).
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
          7: np.float32, 8: np.uint16}
SAMPLED_TOKENS = 1 << 16
"""Tokens read per dataset by the default id check (16 windows spread over the file);
``--check-data`` reads all."""
SIDECAR_SUFFIX = "_meta.json"


def read_index_header(prefix: str) -> tuple[type[np.number], np.ndarray, np.ndarray]:
    """Check ``prefix.idx`` against itself and ``prefix.bin``; return (dtype, lengths, pointers).

    Raises:
        DataError: A bad magic, version or dtype, counts that do not fit the file, a ``.bin``
            whose length differs from what the index says, or an empty dataset.
    """
    idx, bin_path = prefix + ".idx", prefix + ".bin"
    size = os.path.getsize(idx)
    with open(idx, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[: len(INDEX_MAGIC)] != INDEX_MAGIC:
        raise DataError(f"{idx}: not a megatron indexed-dataset index (bad header or magic, {size} "
                        "bytes); re-run tools/preprocess_data.py for this prefix")
    version = int.from_bytes(head[9:17], "little")
    code = head[17]
    sequences, documents = int.from_bytes(head[18:26], "little"), int.from_bytes(head[26:34], "little")
    if version != 1 or code not in DTYPES:
        raise DataError(f"{idx}: unsupported index version {version} or dtype code {code}; re-run "
                        "tools/preprocess_data.py for this prefix")
    expected = HEADER_BYTES + sequences * (4 + 8) + documents * 8
    if size != expected:
        raise DataError(f"{idx}: {size} bytes, but its header ({sequences} sequences, {documents} "
                        f"documents) needs {expected}; the index is truncated or corrupt")
    if sequences == 0:
        raise DataError(f"{idx}: the dataset is empty (no documents); remove it from the data list")
    lengths = np.memmap(idx, dtype=np.int32, mode="r", offset=HEADER_BYTES, shape=(sequences,))
    pointers = np.memmap(idx, dtype=np.int64, mode="r", offset=HEADER_BYTES + 4 * sequences,
                         shape=(sequences,))
    dtype = DTYPES[code]
    itemsize = np.dtype(dtype).itemsize
    tokens = int(lengths.sum(dtype=np.int64))
    if tokens == 0:
        raise DataError(f"{idx}: the dataset is empty (0 tokens); remove it from the data list")
    bin_size = os.path.getsize(bin_path)
    if bin_size != tokens * itemsize or int(pointers[-1]) + int(lengths[-1]) * itemsize != bin_size:
        raise DataError(f"{bin_path}: {bin_size} bytes, but {idx} describes {tokens} tokens of "
                        f"{itemsize} bytes ({tokens * itemsize}); the .bin is truncated or belongs to "
                        "another index. Re-run tools/preprocess_data.py for this prefix")
    return dtype, lengths, pointers


def check_token_ids(prefix: str, dtype: type[np.number], vocab_size: int, *, full: bool) -> None:
    """Token ids of ``prefix.bin`` lie below ``vocab_size`` (a sample, or every one with ``full``).

    Raises:
        DataError: Naming the file, the first id found out of range and its position.
    """
    path = prefix + ".bin"
    tokens = np.memmap(path, dtype=dtype, mode="r")
    chunk = (1 << 16) if full else SAMPLED_TOKENS // 16
    if full or tokens.size <= SAMPLED_TOKENS:
        starts: Iterable[int] = range(0, tokens.size, chunk)
    else:  # evenly spread windows: a file tokenized with a larger vocabulary shows everywhere
        starts = np.linspace(0, tokens.size - chunk, SAMPLED_TOKENS // chunk).astype(np.int64)
    for start in starts:
        window = tokens[int(start): int(start) + chunk]
        bad = np.flatnonzero((window >= vocab_size) | (window < 0))
        if bad.size:
            at = int(start) + int(bad[0])
            raise DataError(f"{path}: token id {int(tokens[at])} at position {at} is outside the "
                            f"tokenizer's vocabulary of {vocab_size}; the data was tokenized with "
                            "another tokenizer (re-tokenize it, or train with its tokenizer)")


def check_sidecar(prefix: str, identity: dict[str, Any]) -> None:
    """``<prefix>_meta.json``'s tokenizer equals this run's (no sidecar: accepted).

    Raises:
        DataError: Type, file hashes or vocabulary size differ, naming both tokenizers.
    """
    path = prefix + SIDECAR_SUFFIX
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f).get("tokenizer")
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: unreadable dataset sidecar ({e}); re-run tools/preprocess_data.py") from None
    if not saved:
        return
    differs = [key for key in ("type", "vocab_size") if saved.get(key) not in (None, identity.get(key))]
    hashes, ours = saved.get("sha256") or [], identity.get("sha256") or []
    if any(hashes) and any(ours) and list(hashes) != list(ours):
        differs.append("sha256")
    if differs:
        raise DataError(
            f"{path}: the data was tokenized with {saved.get('type')} {saved.get('files')} (vocab "
            f"{saved.get('vocab_size')}, sha256 {saved.get('sha256')}); this run uses "
            f"{identity.get('type')} {identity.get('files')} (vocab {identity.get('vocab_size')}, "
            f"sha256 {identity.get('sha256')}); {', '.join(differs)} differ. Train with the data's "
            "tokenizer or re-tokenize the data"
        )


def check_dataset(prefix: str, identity: dict[str, Any] | None, vocab_size: int | None, *,
                  full: bool = False) -> None:
    """Every open-time check of one dataset prefix (the header first: it is the cheapest).

    Args:
        prefix: The dataset prefix (``prefix.bin``/``prefix.idx``).
        identity: This run's tokenizer (type, files, sha256, vocab_size), or None to skip the
            sidecar comparison.
        vocab_size: Ids must be below it (None: not checked, e.g. mock data).
        full: Check every token id (``--check-data``), not a sample.
    """
    dtype, _, _ = read_index_header(prefix)
    if identity is not None:
        check_sidecar(prefix, identity)
    if vocab_size is not None:
        check_token_ids(prefix, dtype, vocab_size, full=full)


def check_data_lists(lists: Iterable[tuple[str, str]], identity: dict[str, Any] | None,
                     vocab_size: int | None, *, full: bool = False) -> int:
    """``check_dataset`` for every prefix of the given ``(flag, data list)`` pairs.

    Returns:
        The number of datasets checked.
    """
    from megatron.data.data_list import parse_data_file_list

    seen: set[str] = set()
    for flag, path in lists:
        for entry in parse_data_file_list(path, flag=flag):
            if entry.prefix not in seen:
                seen.add(entry.prefix)
                check_dataset(entry.prefix, identity, vocab_size, full=full)
    return len(seen)


def check_data_files(plan: Any) -> int:
    """Open-time integrity of every dataset a run (a ``RunPlan``) names; torch-free (``--dry-run``).

    Returns:
        The number of datasets checked (0 with mock data).
    """
    from megatron.checkpointing.metadata import tokenizer_identity  # torch-free; above data/

    data = plan.config.data
    if data.mock_data or data.data_file_list is None:
        return 0
    lists = [(flag, path) for flag, path in (("--data-file-list", data.data_file_list),
                                              ("--valid-data-file-list", data.valid_data_file_list),
                                              ("--test-data-file-list", data.test_data_file_list))
             if path is not None]
    return check_data_lists(lists, tokenizer_identity(plan), plan.model.original_vocab_size,
                            full=data.check_data)
