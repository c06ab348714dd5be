"""Fixed-length GPT samples from a range of documents, reshuffled every epoch.

Sample ``i`` of epoch ``e`` is ``seq_length + 1`` consecutive tokens of the epoch's stream: the
documents in a per-epoch random order, concatenated (samples may span documents, as in
Megatron). Everything is a pure function of (seed, dataset name, epoch, i), so the order does
not depend on the run length and any sample can be read directly (resume never replays data).
The name that salts the shuffle (``shuffle_name``) holds no directory, so the same files give the
same order wherever they sit (a moved checkout, a relative or an absolute path in the list).
"""

from __future__ import annotations

import os
import zlib
from collections import OrderedDict

import numpy as np


def shuffle_name(prefix: str, num_documents: int, split: str) -> str:
    """The dataset name that salts its shuffles: the file name (not the directory), the number of
    documents and the split."""
    return f"{os.path.basename(prefix)}[{num_documents} docs]:{split}"


class SequenceDataset:
    """Random-access samples over documents ``[doc_start, doc_stop)`` of an indexed dataset.

    Args:
        indexed: A megatron-core ``IndexedDataset`` (one sequence per document).
        doc_start: First document of this split.
        doc_stop: One past the last document.
        seq_length: Tokens per training sample (each sample holds one more, for the labels).
        seed: Run seed.
        name: Identifies the dataset and split; salts the shuffles.
        lossmask: Optional uint8 indexed dataset with the same document lengths (1 = trainable;
            written by preprocessing with metadata). Samples then are ``[2, seq_length + 1]``:
            tokens and the trainable flag of each token, read with the same indices.

    Raises:
        ValueError: The documents hold fewer than ``seq_length + 1`` tokens.
    """

    def __init__(
        self, indexed, doc_start: int, doc_stop: int, seq_length: int, seed: int, name: str,
        lossmask=None,
    ):
        self.indexed = indexed
        self.lossmask = lossmask
        self.doc_ids = np.arange(doc_start, doc_stop, dtype=np.int64)
        self.lengths = np.asarray(indexed.sequence_lengths[doc_start:doc_stop], dtype=np.int64)
        self.seq_length = seq_length
        self.name = name
        self._salt = zlib.crc32(name.encode())
        self._seed = seed
        self.tokens_per_epoch = int(self.lengths.sum())
        self.samples_per_epoch = max(0, (self.tokens_per_epoch - 1) // seq_length)
        if self.samples_per_epoch == 0:
            raise ValueError(
                f"{name}: {doc_stop - doc_start} documents hold {self.tokens_per_epoch} tokens, "
                f"fewer than one sample of {seq_length + 1}"
            )
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        if lossmask is not None:
            # uint8 masks are read straight from their memory map (bytes = entries): a second
            # IndexedDataset.get per document piece would cost about a third of a sample read.
            self._mask_bytes = np.asarray(
                np.memmap(f"{lossmask.path_prefix}.bin", dtype=np.uint8, mode="r")
            )
            self._mask_pointers = np.asarray(lossmask.index.sequence_pointers, dtype=np.int64)

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(document order, start offset of each ordered document, sample permutation)."""
        if epoch not in self._epochs:
            rng = np.random.default_rng([self._seed, self._salt, epoch])
            order = rng.permutation(len(self.doc_ids))
            starts = np.zeros(len(order), dtype=np.int64)
            np.cumsum(self.lengths[order][:-1], out=starts[1:])
            shuffle = rng.permutation(self.samples_per_epoch)
            self._epochs[epoch] = (order, starts, shuffle)
            # Readers move forward through epochs; keep two for samples near a boundary.
            while len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def __getitem__(self, index: int) -> np.ndarray:
        """Tokens of sample ``index`` (any non-negative index; epochs repeat); with a loss mask,
        ``[tokens, trainable]`` stacked."""
        return self.sample(*divmod(int(index), self.samples_per_epoch))

    def sample(self, epoch: int, j: int) -> np.ndarray:
        """Sample ``j`` of ``epoch`` (``__getitem__``'s result for ``epoch * samples_per_epoch + j``)."""
        order, starts, shuffle = self._epoch(epoch)
        position = int(shuffle[j]) * self.seq_length
        remaining = self.seq_length + 1
        d = int(np.searchsorted(starts, position, side="right")) - 1
        offset = position - int(starts[d])
        pieces, masks = [], []
        while remaining > 0:
            doc = int(order[d])
            take = min(remaining, int(self.lengths[doc]) - offset)
            pieces.append(self.indexed.get(int(self.doc_ids[doc]), offset=offset, length=take))
            if self.lossmask is not None:
                start = int(self._mask_pointers[self.doc_ids[doc]]) + offset
                masks.append(self._mask_bytes[start : start + take])
            remaining -= take
            d, offset = d + 1, 0
        if self.lossmask is None:
            return np.concatenate(pieces).astype(np.int64, copy=False)
        out = np.empty((2, self.seq_length + 1), dtype=np.int64)
        np.concatenate(pieces, out=out[0], casting="unsafe")
        np.concatenate(masks, out=out[1], casting="unsafe")
        return out


def split_documents(num_documents: int, ratios: tuple[float, float, float]) -> list[tuple[int, int]]:
    """Contiguous document ranges for train/valid/test by ``ratios`` (rounded, summing to all).

    A split with a positive ratio always receives at least one document; a dataset too small
    for that is an error rather than the silent hang megatron-core shows on an empty split.

    Raises:
        ValueError: Fewer documents than non-empty splits.
    """
    wanted = [r > 0 for r in ratios]
    if num_documents < sum(wanted):
        raise ValueError(
            f"{num_documents} documents cannot fill {sum(wanted)} non-empty splits; use a "
            "--split with fewer parts or separate validation lists"
        )
    bounds = [0]
    cumulative = 0.0
    for ratio in ratios:
        cumulative += ratio
        bounds.append(int(round(cumulative * num_documents)))
    bounds[-1] = num_documents
    # Give every wanted split at least one document, borrowing from the largest.
    sizes = [bounds[i + 1] - bounds[i] for i in range(3)]
    for i in range(3):
        if wanted[i] and sizes[i] == 0:
            donor = int(np.argmax(sizes))
            sizes[donor] -= 1
            sizes[i] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return [(int(starts[i]), int(starts[i + 1])) for i in range(3)]
