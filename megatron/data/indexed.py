"""megatron-core's indexed dataset format (``.bin`` tokens + ``.idx`` index), read and written.

Writes go to temporary names and are renamed when complete (``.bin`` first, ``.idx`` last), so
an interrupted tokenization never leaves a prefix that looks valid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType

import numpy as np


def token_dtype(vocab_size: int) -> type[np.number]:
    """Smallest dtype for ids below ``vocab_size`` (uint16 up to 65500, else int32)."""
    return np.uint16 if vocab_size < 65500 else np.int32


def open_indexed(prefix: str):  # noqa: ANN201  (megatron.core IndexedDataset)
    """Memory-map an indexed dataset for reading."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return IndexedDataset(prefix, mmap=True)


class IndexedWriter:
    """Append documents to a new indexed dataset; atomic on success, cleaned up on failure.

    Args:
        prefix: Output prefix (``prefix.bin`` and ``prefix.idx``).
        vocab_size: Vocabulary size (chooses the token dtype).
        dtype: Overrides the dtype (e.g. ``np.uint8`` for a loss-mask dataset).
    """

    def __init__(self, prefix: str, vocab_size: int, dtype: type[np.number] | None = None):
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.prefix = prefix
        self.tmp_prefix = f"{prefix}.tmp-{os.getpid()}"
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        self.dtype = dtype or token_dtype(vocab_size)
        self._builder = IndexedDatasetBuilder(self.tmp_prefix + ".bin", dtype=self.dtype)
        self.num_documents = 0
        self.num_tokens = 0

    def add_document(self, ids: Sequence[int] | np.ndarray) -> None:
        """Append one document (its ids, end-of-document token included if wanted)."""
        array = np.asarray(ids, dtype=self.dtype)
        self._builder.add_document(array, [array.size])
        self.num_documents += 1
        self.num_tokens += int(array.size)

    def add_documents(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append many documents at once: ``flat`` is their ids concatenated, ``lengths`` each
        document's length (the same bytes as one ``add_document`` per document, without the
        per-document copies)."""
        array = np.asarray(flat, dtype=self.dtype)
        builder = self._builder
        first = len(builder.sequence_lengths)
        builder.add_document(array, lengths.tolist())
        # add_document records one document of len(lengths) sequences; each sequence is a
        # document here, so the document index gets one entry per sequence instead.
        builder.document_indices[-1:] = range(first + 1, first + len(lengths) + 1)
        self.num_documents += len(lengths)
        self.num_tokens += int(array.size)

    def __enter__(self) -> IndexedWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._builder.finalize(self.tmp_prefix + ".idx")
            os.replace(self.tmp_prefix + ".bin", self.prefix + ".bin")
            os.replace(self.tmp_prefix + ".idx", self.prefix + ".idx")
            return
        self._builder.data_file.close()
        for ext in (".bin", ".idx"):
            if os.path.exists(self.tmp_prefix + ext):
                os.remove(self.tmp_prefix + ext)
