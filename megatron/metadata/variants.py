"""Pre-drawn metadata variants in training: epoch ``e`` reads variant ``e mod K``.

Records preprocessing (``megatron/metadata/local_preprocess.py``) writes K variants of a
dataset, each with the metadata draws of one epoch. ``VariantSequenceDataset`` strings them
together: a cycle of K epochs holds the samples of variant 0 (epoch 0), then variant 1 (epoch
1), ...; within an epoch the usual per-epoch shuffle applies. Sample ``i`` is a pure function
of (seed, dataset, i), so a resumed run reads what an uninterrupted one reads, and nothing is
tokenized again.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from megatron.config.fields import ConfigError
from megatron.data.indexed import open_indexed
from megatron.data.sequences import SequenceDataset
from megatron.metadata.lossmask import find_lossmask, open_lossmask
from megatron.metadata.preprocess import LOSSMASK_KEY, metadata_json_path

log = logging.getLogger(__name__)


def variant_prefixes(prefix: str) -> list[str]:
    """Text prefixes of variants 1..K-1 of the dataset ``prefix`` (empty: no variants)."""
    mask = find_lossmask(prefix)
    if mask is None:
        return []
    stem = mask.removesuffix(f"_{LOSSMASK_KEY}_document")
    summary = metadata_json_path(stem)
    if not os.path.isfile(summary):
        return []
    with open(summary) as f:
        variants = json.load(f).get("variants") or []
    folder = os.path.dirname(summary)
    return [os.path.join(folder, os.path.basename(v["text_prefix"])) for v in variants[1:]]


def open_variants(prefix: str, indexed, with_mask: bool) -> list[tuple[object, object]]:  # noqa: ANN001
    """``(tokens, loss mask or None)`` of variants 1..K-1, checked against variant 0.

    Raises:
        ConfigError: A variant is missing or holds another number of documents.
    """
    out = []
    for vp in variant_prefixes(prefix):
        if not os.path.isfile(vp + ".idx"):
            raise ConfigError(
                f"{vp}.idx: variant listed in the metadata summary of {prefix} is missing; "
                "rerun tools/preprocess_data.py"
            )
        tokens = open_indexed(vp)
        if len(tokens) != len(indexed):
            raise ConfigError(
                f"{vp}.idx holds {len(tokens)} documents but {prefix}.idx holds {len(indexed)}: "
                "the variants do not belong together; rerun tools/preprocess_data.py"
            )
        out.append((tokens, open_lossmask(vp, tokens) if with_mask else None))
    if out:
        log.info(
            "metadata variants of %s: K = %d pre-drawn datasets, epoch e reads variant e mod %d",
            prefix, len(out) + 1, len(out) + 1,
        )  # fmt: skip
    return out


class VariantSequenceDataset:
    """Samples of K variants of one document range: epoch ``e`` reads variant ``e mod K``.

    Args:
        variants: One ``SequenceDataset`` per variant (same documents, same name).
    """

    def __init__(self, variants: list[SequenceDataset]):
        self.variants = variants
        counts = [v.samples_per_epoch for v in variants]
        self.bounds = np.concatenate([[0], np.cumsum(counts)])
        self.cycle = int(self.bounds[-1])
        self.name = variants[0].name
        self.seq_length = variants[0].seq_length
        self.tokens_per_epoch = variants[0].tokens_per_epoch
        self.samples_per_epoch = min(counts)  # the fewest unique samples an epoch holds
        self._last = (0, 0, 0)  # (first index, stop, epoch) of the last epoch located

    def locate(self, index: int) -> tuple[int, int]:
        """``(epoch, sample within the epoch)`` of ``index``."""
        first, stop, epoch = self._last
        if first <= index < stop:  # readers move forward: mostly the epoch of the last call
            return epoch, index - first
        cycles, rest = divmod(int(index), self.cycle)
        k = int(np.searchsorted(self.bounds, rest, side="right")) - 1
        first = cycles * self.cycle + int(self.bounds[k])
        epoch = cycles * len(self.variants) + k
        self._last = (first, first + self.variants[k].samples_per_epoch, epoch)
        return epoch, int(index) - first

    def __getitem__(self, index: int) -> np.ndarray:
        epoch, j = self.locate(int(index))
        return self.variants[epoch % len(self.variants)].sample(epoch, j)
