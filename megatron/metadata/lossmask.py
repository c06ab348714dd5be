"""Find and check the loss-mask dataset that sits next to a text dataset written with metadata.

``tools/preprocess_data.py --metadata-keys ... --output-prefix OUT`` writes
``OUT_<key>_document`` (tokens) and ``OUT_lossmask_document`` (uint8, 1 = trainable). Training
opens the loss mask of every dataset that has one and reads it with the same document, sample
and shuffle indices as the tokens. A mask whose documents do not line up with the tokens would
silently train on the wrong positions, so it is refused before training.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from megatron.config.fields import ConfigError
from megatron.data.indexed import open_indexed
from megatron.metadata.preprocess import lossmask_prefix, metadata_json_path

log = logging.getLogger(__name__)

SUFFIX = "_document"


def find_lossmask(prefix: str) -> str | None:
    """The ``OUT_lossmask_document`` prefix for a text dataset ``OUT_<key>_document``, if present.

    ``<key>`` may itself contain underscores, so every split point is tried (rightmost first); a
    mask at another split point is taken only when its ``OUT_metadata.json`` names this dataset
    (``data/my_text_document``'s mask must not be attached to ``data/my_corpus_text_document``).
    """
    if not prefix.endswith(SUFFIX) or prefix == lossmask_prefix(prefix.removesuffix(SUFFIX)):
        return None
    stem = prefix.removesuffix(SUFFIX)
    cuts = [cut for cut in range(len(stem) - 1, 0, -1) if stem[cut] == "_"]
    for rank, cut in enumerate(cuts):
        candidate = lossmask_prefix(stem[:cut])
        if not os.path.isfile(candidate + ".idx"):
            continue
        summary = metadata_json_path(stem[:cut])
        if os.path.isfile(summary):
            with open(summary) as f:
                named = json.load(f).get("text_prefix", "")
            if os.path.basename(named) == os.path.basename(prefix):
                return candidate
        elif rank == 0:
            return candidate
    return None


def open_lossmask(prefix: str, indexed):  # noqa: ANN001, ANN201  (megatron.core IndexedDataset)
    """The loss-mask dataset of ``prefix`` (or None), checked against its text dataset.

    Raises:
        ConfigError: The mask's document count or lengths differ from the text's, or it is not
            uint8; the message names both files.
    """
    mask_prefix = find_lossmask(prefix)
    if mask_prefix is None:
        return None
    if not os.path.isfile(mask_prefix + ".bin"):
        raise ConfigError(
            f"{mask_prefix}.bin: missing (its .idx exists); rerun tools/preprocess_data.py"
        )
    mask = open_indexed(mask_prefix)
    text_lengths = np.asarray(indexed.sequence_lengths)
    mask_lengths = np.asarray(mask.sequence_lengths)
    fix = "re-run tools/preprocess_data.py --metadata-keys ... for both, or remove the stale mask"
    if mask.index.dtype != np.uint8:
        raise ConfigError(
            f"{mask_prefix}.idx: a loss mask must be uint8, found {mask.index.dtype}; {fix}"
        )
    if len(mask_lengths) != len(text_lengths):
        raise ConfigError(
            f"{mask_prefix}.idx holds {len(mask_lengths)} documents but {prefix}.idx holds "
            f"{len(text_lengths)}: the loss mask does not belong to this text dataset; {fix}"
        )
    if not np.array_equal(mask_lengths, text_lengths):
        first = int(np.flatnonzero(mask_lengths != text_lengths)[0])
        raise ConfigError(
            f"{mask_prefix}.idx: document {first} has {mask_lengths[first]} mask entries but "
            f"{prefix}.idx has {text_lengths[first]} tokens: the loss mask does not belong to "
            f"this text dataset; {fix}"
        )
    log.info("loss mask %s: metadata tokens of %s are not trained on", mask_prefix, prefix)
    return mask
